"""End to end: enqueue in this process, a real worker sends over STARTTLS + AUTH to aiosmtpd."""

import base64

from producer import enqueue_email


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
