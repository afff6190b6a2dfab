"""End to end: enqueue in this process, a real worker sends over STARTTLS + AUTH to aiosmtpd."""

import json

from emailq.producer import enqueue_email
from tests.support import smtp


def test_plain_text_job_is_delivered_over_starttls_with_auth(smtp_server, start_worker):
    start_worker(smtp_server)

    result = enqueue_email.delay(to="ann@example.com", subject="Backup finished", text="All good.")

    report = result.get(timeout=30)
    [received] = smtp_server.handler.wait_for(1)
    assert received.rcpt_tos == ["ann@example.com"]
    assert received.mail_from == "sender@example.com"
    msg = received.message
    assert msg["Subject"] == "Backup finished"
    assert msg["Message-ID"] == f"<{result.id}@example.com>" == report["message_id"]
    assert msg.get_content().strip() == "All good."
    assert smtp_server.handler.logins == 1
    assert report["accepted"] == ["ann@example.com"]


def test_html_report_with_attachment_and_cc_reply_to_headers(smtp_server, start_worker, tmp_path):
    start_worker(smtp_server)
    report = tmp_path / "report.pdf"
    report.write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 64)

    result = enqueue_email.delay(
        to=["Ann Smith <ann@example.com>", "bob@example.com"],
        cc="carol@example.com",
        reply_to="support@example.com",
        subject="Weekly report",
        text="See the attached report.",
        html="<p>See the <b>attached</b> report.</p>",
        headers={"X-Ticket": "42"},
        attachments=[report, {"filename": "data.bin", "content": b"\x00\xff" * 1000}],
    )
    result.get(timeout=30)

    [received] = smtp_server.handler.wait_for(1)
    assert sorted(received.rcpt_tos) == ["ann@example.com", "bob@example.com", "carol@example.com"]
    msg = received.message
    assert msg["To"] == "Ann Smith <ann@example.com>, bob@example.com"
    assert msg["Cc"] == "carol@example.com"
    assert msg["Reply-To"] == "support@example.com"
    assert msg["X-Ticket"] == "42"
    assert msg["Date"] is not None
    assert msg.get_content_type() == "multipart/mixed"
    assert msg.get_body(("plain",)).get_content().strip() == "See the attached report."
    assert "<b>attached</b>" in msg.get_body(("html",)).get_content()
    files = {part.get_filename(): part.get_content() for part in msg.iter_attachments()}
    assert files == {"report.pdf": report.read_bytes(), "data.bin": b"\x00\xff" * 1000}
    assert msg["From"] == "Notifications <sender@example.com>"


def test_bcc_is_in_the_envelope_only(smtp_server, start_worker):
    start_worker(smtp_server)

    result = enqueue_email.delay(
        to="ann@example.com", bcc=["audit@example.com"], subject="Receipt", text="Thanks"
    ).get(timeout=30)

    [received] = smtp_server.handler.wait_for(1)
    assert "audit@example.com" in received.rcpt_tos
    assert b"audit@example.com" not in received.data
    assert received.message["Bcc"] is None
    # The task's result, kept for days and shown by Flower, counts Bcc recipients only
    assert result["accepted"] == ["ann@example.com"]
    assert result["bcc"] == {"accepted": 1, "refused": 0}
    assert "audit@example.com" not in str(result)


def test_html_only_mail_gets_a_generated_text_part(smtp_server, start_worker):
    start_worker(smtp_server)

    enqueue_email.delay(
        to="ann@example.com",
        subject="Status",
        html="<h1>All systems go</h1><p>See <a href='https://status.example.com'>status</a>.</p>",
    ).get(timeout=30)

    msg = smtp_server.handler.wait_for(1)[0].message
    assert msg.get_content_type() == "multipart/alternative"
    text = msg.get_body(("plain",)).get_content()
    assert "All systems go" in text and "https://status.example.com" in text
    assert "<h1>" not in text and "<a " not in text


def test_non_ascii_subject_names_and_body_arrive_intact(smtp_server, start_worker):
    start_worker(smtp_server, EMAIL_FROM="Zoë's Café <sender@example.com>")
    subject, body = "Grüße aus Köln — 東京 🎉", "Hallo Jürgen,\nça va? 你好\n"

    enqueue_email.delay(to="Jürgen Groß <jurgen@example.com>", subject=subject, text=body).get(
        timeout=30
    )

    received = smtp_server.handler.wait_for(1)[0]
    assert received.data.isascii()  # encoded for any SMTP hop, no 8BITMIME needed
    msg = received.message
    assert msg["Subject"] == subject
    assert msg["To"].addresses[0].display_name == "Jürgen Groß"
    assert msg["From"].addresses[0].display_name == "Zoë's Café"
    assert msg.get_content().replace("\r\n", "\n") == body  # CRLF is SMTP's line ending


def test_secrets_and_bodies_stay_out_of_task_arguments_and_logs(
    smtp_server, start_worker, session_redis
):
    # Given a job whose body is sensitive, enqueued before any worker runs
    secret_body = "reset token 7f3a9c"
    result = enqueue_email.delay(to="ann@example.com", subject="Reset", text=secret_body)
    [raw] = session_redis.client().lrange("normal", 0, -1)
    headers = json.loads(raw)["headers"]

    # Then what Flower and `celery events` show (kwargsrepr) summarises without the body
    assert secret_body not in headers["kwargsrepr"]
    assert "<18 chars>" in headers["kwargsrepr"]

    # And the worker delivers it without logging the body or the SMTP password
    worker = start_worker(smtp_server)
    result.get(timeout=30)
    worker.stop()
    assert smtp.PASSWORD not in worker.log()
    assert secret_body not in worker.log()
