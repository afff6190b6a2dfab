"""``worker.message.build_message``: the MIME message as it goes on the wire, parsed back."""

import email
import email.policy
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage

import pytest

from emailq.core.job import Attachment, EmailJob
from emailq.worker.message import build_message

JOB_ID = "5b1f7c2e-9d4a-4e61-a0f3-2c8d9e6b7a10"
SENDER = Address("Alerts", "alerts", "example.com")
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
BINARY = bytes(range(256)) * 100


def make_job(**changes) -> EmailJob:
    fields = {"to": ("ann@example.com",), "subject": "Hello", "text": "Hi Ann\n"}
    fields.update(changes)
    return EmailJob(**fields)


def wire(job: EmailJob, *, job_id: str = JOB_ID, sender: Address = SENDER) -> bytes:
    return build_message(job, job_id=job_id, sender=sender, now=NOW).as_bytes()


def parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def built(job: EmailJob, **options) -> EmailMessage:
    return parse(wire(job, **options))


def content_types(msg: EmailMessage) -> list[str]:
    return [part.get_content_type() for part in msg.walk()]


# Headers


def test_address_subject_and_date_headers_are_written():
    msg = built(
        make_job(
            to=("Ann <ann@example.com>", "bob@example.com"),
            cc=("carl@example.com",),
            reply_to=("Replies <replies@example.com>",),
            subject="Your report",
        )
    )
    assert msg["From"].addresses == (SENDER,)
    assert msg["To"].addresses == (
        Address("Ann", "ann", "example.com"),
        Address("", "bob", "example.com"),
    )
    assert msg["Cc"].addresses == (Address("", "carl", "example.com"),)
    assert msg["Reply-To"].addresses == (Address("Replies", "replies", "example.com"),)
    assert msg["Subject"] == "Your report"
    assert msg["Date"].datetime == NOW


def test_date_defaults_to_now_with_a_timezone():
    before = datetime.now(UTC).replace(microsecond=0)
    msg = parse(build_message(make_job(), job_id=JOB_ID, sender=SENDER).as_bytes())
    assert before <= msg["Date"].datetime <= datetime.now(UTC)


def test_optional_address_headers_are_absent_when_unused():
    msg = built(make_job())
    for name in ("Cc", "Reply-To", "Bcc"):
        assert name not in msg


def test_custom_headers_are_written():
    headers = {"X-Campaign": "spring-2024", "List-Unsubscribe": "<mailto:unsub@example.com>"}
    msg = built(make_job(headers=headers))
    for name, value in headers.items():
        assert msg[name] == value


def test_bcc_never_appears_in_the_message():
    job = make_job(
        to=("ann@example.com",),
        bcc=("Hidden Person <hidden@secret.example>", "other@secret.example"),
    )
    data = wire(job)
    assert "Bcc" not in parse(data)
    assert b"bcc" not in data.lower()
    assert b"hidden" not in data.lower()
    assert b"secret.example" not in data


def test_message_id_is_the_job_id_at_the_sender_domain():
    assert built(make_job())["Message-ID"] == f"<{JOB_ID}@example.com>"


def test_message_id_is_the_same_when_built_again_for_a_retry():
    job = make_job()
    first = build_message(job, job_id=JOB_ID, sender=SENDER, now=NOW)
    retry = build_message(job, job_id=JOB_ID, sender=SENDER, now=datetime.now(UTC))
    assert first["Message-ID"] == retry["Message-ID"] == f"<{JOB_ID}@example.com>"


def test_message_id_uses_the_ascii_form_of_an_idn_sender_domain():
    sender = Address("", "noreply", "bücher.example")
    assert built(make_job(), sender=sender)["Message-ID"] == f"<{JOB_ID}@xn--bcher-kva.example>"


def test_from_header_writes_an_idn_sender_domain_in_ascii_form():
    data = wire(make_job(), sender=Address("", "noreply", "bücher.example"))
    from_line = next(line for line in data.splitlines() if line.startswith(b"From:"))
    assert b"=?" not in from_line
    assert parse(data)["From"].addresses[0].domain == "xn--bcher-kva.example"


# Structure


def test_text_only_job_is_a_single_text_plain_part():
    msg = built(make_job(text="Hi Ann,\nyour report is ready.\n"))
    assert not msg.is_multipart()
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content() == "Hi Ann,\nyour report is ready.\n"


def test_text_and_html_give_multipart_alternative_text_first():
    msg = built(make_job(text="Plain version\n", html="<p>HTML version</p>\n"))
    assert msg.get_content_type() == "multipart/alternative"
    plain, html = msg.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert html.get_content_type() == "text/html"
    assert plain.get_content() == "Plain version\n"
    assert html.get_content() == "<p>HTML version</p>\n"


def test_html_only_job_gets_a_generated_text_alternative():
    page = (
        "<html><body><h1>Quarterly report</h1>"
        '<p>Your numbers are <b>ready</b>: <a href="https://example.com/r?id=42">open it</a>.</p>'
        "</body></html>"
    )
    msg = built(make_job(text=None, html=page))
    assert msg.get_content_type() == "multipart/alternative"
    plain, html = msg.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert html.get_content_type() == "text/html"
    text = plain.get_content()
    for word in ("Quarterly", "report", "numbers", "ready", "open it"):
        assert word in text
    assert "<" not in text
    assert ">" not in text
    assert "https://example.com/r?id=42" in text
    assert html.get_content() == page + "\n"


@pytest.mark.parametrize(
    ("bodies", "body_type"),
    [
        ({"text": "Plain\n"}, "text/plain"),
        ({"text": "Plain\n", "html": "<p>HTML</p>\n"}, "multipart/alternative"),
    ],
    ids=["text", "text+html"],
)
def test_attachments_give_multipart_mixed_with_the_body_first(bodies, body_type):
    attachment = Attachment("report.pdf", b"%PDF-1.4 fake", "application/pdf")
    msg = built(make_job(**bodies, attachments=(attachment,)))
    assert msg.get_content_type() == "multipart/mixed"
    body, attached = msg.iter_parts()
    assert body.get_content_type() == body_type
    assert attached.get_content_type() == "application/pdf"
    assert attached.get_content_disposition() == "attachment"
    assert attached.get_filename() == "report.pdf"
    assert attached.get_content() == b"%PDF-1.4 fake"
    assert msg.get_body(("plain",)).get_content() == "Plain\n"


def test_binary_attachment_is_decoded_byte_for_byte():
    attachments = (
        Attachment("blob.bin", BINARY, "application/octet-stream"),
        Attachment("image.png", b"\x89PNG\r\n\x1a\n" + BINARY[:512], "image/png"),
    )
    msg = built(make_job(attachments=attachments))
    parsed = list(msg.iter_attachments())
    assert [(a.get_filename(), a.get_content_type()) for a in parsed] == [
        ("blob.bin", "application/octet-stream"),
        ("image.png", "image/png"),
    ]
    assert [a.get_content() for a in parsed] == [a.content for a in attachments]


@pytest.mark.parametrize("filename", ["résumé 2024.pdf", "отчёт.txt", "報告書.bin"])
def test_non_ascii_attachment_filename_is_preserved(filename):
    data = wire(make_job(attachments=(Attachment(filename, BINARY),)))
    assert data.isascii()
    (attached,) = parse(data).iter_attachments()
    assert attached.get_filename() == filename
    assert attached.get_content() == BINARY


# 7-bit safety and non-ASCII round trips


NON_ASCII_SUBJECTS = [
    "Grüße aus Köln",
    "日本語の件名 ☀",
    "Ein ziemlich langer Betreff mit Umlauten äöü, Akzenten éèê und noch mehr Text, "
    "der sicher gefaltet wird — 日本語",
]


@pytest.mark.parametrize("subject", NON_ASCII_SUBJECTS)
def test_non_ascii_subject_round_trips_in_a_7bit_message(subject):
    data = wire(make_job(subject=subject))
    assert data.isascii()
    assert parse(data)["Subject"] == subject


def test_non_ascii_display_names_round_trip_in_a_7bit_message():
    job = make_job(
        to=("Zoë Ünicode <zoe@example.com>", "Łukasz Żółć <lukasz@example.com>"),
        cc=("山田 太郎 <taro@example.com>",),
        reply_to=("Çédric <cedric@example.com>",),
    )
    data = wire(job, sender=Address("Ålert Bøt", "alerts", "example.com"))
    assert data.isascii()
    msg = parse(data)
    assert msg["From"].addresses[0].display_name == "Ålert Bøt"
    assert [a.display_name for a in msg["To"].addresses] == ["Zoë Ünicode", "Łukasz Żółć"]
    assert msg["Cc"].addresses[0].display_name == "山田 太郎"
    assert msg["Reply-To"].addresses[0].display_name == "Çédric"


def test_non_ascii_header_value_round_trips_in_a_7bit_message():
    data = wire(make_job(headers={"X-Campaign": "Frühling ☀"}))
    assert data.isascii()
    assert parse(data)["X-Campaign"] == "Frühling ☀"


def test_non_ascii_text_and_html_bodies_round_trip_in_a_7bit_message():
    text = "Grüße, Zoë!\nŻółć — 日本語 ☀\n"
    html = "<p>Grüße, <b>Zoë</b>!</p>\n<p>Żółć — 日本語 ☀</p>\n"
    data = wire(make_job(text=text, html=html))
    assert data.isascii()
    msg = parse(data)
    assert msg.get_body(("plain",)).get_content() == text
    assert msg.get_body(("html",)).get_content() == html


def test_non_ascii_html_only_body_gives_a_7bit_message_with_its_words():
    data = wire(make_job(text=None, html="<p>Grüße aus <i>Köln</i> ☀</p>"))
    assert data.isascii()
    assert "Grüße aus" in parse(data).get_body(("plain",)).get_content()
    assert "Köln" in parse(data).get_body(("plain",)).get_content()


def test_whole_message_with_everything_non_ascii_is_7bit():
    job = make_job(
        to=("Zoë <zoe@example.com>",),
        subject="Grüße ☀",
        text="Grüße\n",
        html="<p>Grüße</p>\n",
        headers={"X-Note": "ünïcödé"},
        attachments=(Attachment("résumé.pdf", BINARY, "application/pdf"),),
    )
    data = wire(job, sender=Address("Ålert", "alerts", "example.com"))
    assert data.isascii()
    assert content_types(parse(data)) == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "text/html",
        "application/pdf",
    ]
