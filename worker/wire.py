"""The message's wire bytes without building an ``EmailMessage``, for the common shape.

``EmailMessage`` parses every header it is given and folds it again on output, which
costs more CPU than the rest of a send. Most notifications need none of that: short
ASCII headers, a text and/or HTML body, no attachments. For those this writes the
bytes ``build_message(...).as_bytes(policy=policy.SMTP)`` would, byte for byte (the
tests compare the two); anything else returns None and goes through ``EmailMessage``.
Bodies are encoded by the email package's own function, so encodings never differ.
"""

import random
import re
import sys
from datetime import UTC, datetime
from email import contentmanager, policy
from email.headerregistry import Address
from email.utils import format_datetime

from emailq.core.job import EmailJob
from emailq.worker.message import _cte, build_message, html_to_text, message_id

MAX_LINE = policy.SMTP.max_line_length
# Printable ASCII words separated by single spaces, and no encoded-word opener.
PLAIN = re.compile(r"(?!.*=\?)[\x21-\x7e]+(?: [\x21-\x7e]+)*")
ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
ADDR_SPEC = rf"{ATEXT}(?:\.{ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
# A bare address, or a display name of plain words before one: what needs no quoting.
ADDRESS = re.compile(rf"(?:{ADDR_SPEC}|{ATEXT}(?: {ATEXT})* <{ADDR_SPEC}>)")
PARSED = frozenset(policy.default.header_factory.registry)  # names the email package re-renders
NL = re.compile(r"\r\n|\r|\n")
BOUNDARY_DIGITS = len(repr(sys.maxsize - 1))


def message_bytes(
    job: EmailJob, *, job_id: str, sender: Address, now: datetime | None = None
) -> bytes:
    """What goes after DATA: the fast path when it applies, ``EmailMessage`` otherwise."""
    now = now or datetime.now(UTC)
    fast = _fast(job, job_id=job_id, sender=sender, now=now)
    if fast is not None:
        return fast
    return build_message(job, job_id=job_id, sender=sender, now=now).as_bytes(policy=policy.SMTP)


def _fast(job: EmailJob, *, job_id: str, sender: Address, now: datetime) -> bytes | None:
    if job.attachments:
        return None
    domain = sender.domain.encode("idna").decode("ascii")
    headers = [("From", str(Address(sender.display_name, sender.username, domain)), True)]
    headers.append(("To", ", ".join(job.to), True))
    if job.cc:
        headers.append(("Cc", ", ".join(job.cc), True))
    if job.reply_to:
        headers.append(("Reply-To", ", ".join(job.reply_to), True))
    headers += [
        ("Subject", job.subject, False),
        ("Date", format_datetime(now), False),
        ("Message-ID", message_id(job_id, sender), False),
    ]
    for name, value in job.headers.items():
        if name.lower() in PARSED:
            return None
        headers.append((name, value, False))
    lines = []
    for name, value, addresses in headers:
        line = f"{name}: {value}"
        if len(line) > MAX_LINE or not PLAIN.fullmatch(value):
            return None
        if addresses and not all(ADDRESS.fullmatch(a) for a in value.split(", ")):
            return None
        lines.append(line)
    text = job.text if job.text is not None else html_to_text(job.html or "")
    if job.html is None:
        lines += _part("plain", text, mime_version=True)
        return _join(lines)
    boundary = "=" * 15 + f"{random.randrange(sys.maxsize):0{BOUNDARY_DIGITS}d}" + "=="
    lines += [
        "MIME-Version: 1.0",
        "Content-Type: multipart/alternative;",
        f' boundary="{boundary}"',
        "",
        f"--{boundary}",
        *_part("plain", text, mime_version=False),
        f"--{boundary}",
        *_part("html", job.html, mime_version=True),
        f"--{boundary}--",
        "",
    ]
    return _join(lines)


def _part(subtype: str, body: str, *, mime_version: bool) -> list[str]:
    cte, payload = contentmanager._encode_text(body, "utf-8", _cte(body), policy.default)
    head = [f'Content-Type: text/{subtype}; charset="utf-8"', f"Content-Transfer-Encoding: {cte}"]
    if mime_version:
        head.append("MIME-Version: 1.0")
    return [*head, "", NL.sub("\r\n", payload)]


def _join(lines: list[str]) -> bytes:
    return "\r\n".join(lines).encode("ascii")
