"""The fast wire path writes exactly what ``EmailMessage`` would, or steps aside."""

import random
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address

import pytest

from emailq.core.job import Attachment, EmailJob
from emailq.worker import wire
from emailq.worker.message import build_message

SENDER = Address("Notifications", "sender", "example.com")
NOW = datetime(2026, 1, 1, 12, 30, tzinfo=UTC)
TRICKY = "aZ09 .,;:\"'()<>[]\\@=?_-~!#$%&*+/{}|^`\té\u2028\r\n"
BASE = dict(cc=(), bcc=(), reply_to=(), headers={}, attachments=(), priority="normal",
            idempotency_key=None, batch_id=None)  # fmt: skip


def _reference(job: EmailJob, fast: bytes | None) -> bytes:
    message = build_message(job, job_id="0f1e2d3c-job", sender=SENDER, now=NOW)
    if message.is_multipart() and fast is not None:
        message.set_boundary(fast.split(b'boundary="')[1].split(b'"')[0].decode())
    return message.as_bytes(policy=policy.SMTP)


def _words(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, n)))


def _job(rng: random.Random) -> EmailJob:
    plain = "abcdefghij ABC.-_+"
    to = [f"{_words(rng, 'abcxyz._+', 8) or 'u'}@example.com" for _ in range(rng.randint(1, 4))]
    if rng.random() < 0.3:
        to[0] = f"{_words(rng, plain + TRICKY if rng.random() < 0.3 else plain, 20)} <ann@x.org>"
    subject = _words(rng, TRICKY if rng.random() < 0.3 else plain, 90)
    lines = [_words(rng, TRICKY if rng.random() < 0.2 else plain, 120) for _ in range(5)]
    text = rng.choice(["\n", "\r\n", "\r"]).join(lines) if rng.random() < 0.8 else None
    html = (
        f"<p>{_words(rng, plain + 'é<>&', 300)}</p>" if text is None or rng.random() < 0.5 else None
    )
    headers = {"X-Tag": _words(rng, plain, 40)} if rng.random() < 0.3 else {}
    reply_to = ("help@example.com",) if rng.random() < 0.3 else ()
    return EmailJob(**{**BASE, "to": tuple(to), "subject": subject, "text": text, "html": html,
                       "headers": headers, "reply_to": reply_to})  # fmt: skip


def test_random_jobs_come_out_byte_for_byte_as_email_message_writes_them():
    rng = random.Random(2920)
    fast_count = 0
    for _ in range(1500):
        job = _job(rng)
        fast = wire._fast(job, job_id="0f1e2d3c-job", sender=SENDER, now=NOW)
        if fast is None:
            continue
        fast_count += 1
        assert fast == _reference(job, fast), job
    assert fast_count > 200  # the common shapes do take the fast path


@pytest.mark.parametrize(
    "change",
    [
        {"attachments": (Attachment("a.txt", b"x", "text/plain"),)},
        {"subject": "Grüße"},
        {"subject": "x" * 80},
        {"subject": "=?utf-8?q?hi?="},
        {"headers": {"Resent-To": "a@example.com"}},
        {"to": ('"Ann B." <ann@example.com>',)},
    ],
)
def test_anything_unusual_goes_through_email_message(change):
    fields = {"to": ("ann@example.com",), "subject": "Hi", "text": "x", "html": None}
    job = EmailJob(**{**BASE, **fields, **change})
    assert wire._fast(job, job_id="j", sender=SENDER, now=NOW) is None
    sent = wire.message_bytes(job, job_id="j", sender=SENDER, now=NOW)
    assert (
        sent == build_message(job, job_id="j", sender=SENDER, now=NOW).as_bytes(policy=policy.SMTP)
        or job.attachments
    )  # attachments carry a random boundary
