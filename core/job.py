"""The job payload: a small frozen dataclass that travels as JSON.

The wire form (``to_dict``) uses the same keywords as ``enqueue_email``, so a
payload read back from the broker or the dead-letter queue can be enqueued again
as it is. Attachment bytes travel base64-encoded under ``content_b64``.
"""

import base64
import binascii
import re
import time
from dataclasses import dataclass, field, replace
from email import policy
from email.utils import parseaddr
from typing import Any

from emailq.core.errors import InvalidEmail
from emailq.core.keys import QUEUES

PRIORITIES = QUEUES
# What str.splitlines() breaks a line at, besides CR and LF: never allowed in a header.
BREAKING = ("\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")
HEADER_UNSAFE = frozenset(("\r", "\n", "\0", *BREAKING))
# An RFC 2047 encoded word written by the caller: the email package would decode it on
# the way out, so "=?utf-8?q?=0D=0ABcc:...?=" would become a real header line.
ENCODED_WORD = re.compile(r"=\?[^?\s]*\?[bBqQ]\?[^?\s]*\?=")
# Custom header names the email package parses and refolds (Resent-*, Orig-Date...) or
# drops (Content-* when it builds the MIME parts): only unstructured names are safe.
STRUCTURED = frozenset(policy.default.header_factory.registry)
MIMETYPE = re.compile(r"[\w.+-]+/[\w.+-]+", re.ASCII)
# C0 controls but tab, DEL and C1 controls: they go out raw and can swallow what follows.
CONTROL = re.compile(r"[\x01-\x08\x0e-\x1f\x7f-\x9f]")


def header_problem(value: str) -> str | None:
    """Why ``value`` cannot go into a header, or None."""
    if not HEADER_UNSAFE.isdisjoint(value):
        return "a line break or NUL"
    if CONTROL.search(value):
        return "a control character"
    if ENCODED_WORD.search(value):
        return "an encoded word (=?charset?q?...?=); give the text itself"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "a lone surrogate, which is not text"
    return None


def custom_header_problem(name: str) -> str | None:
    """Why ``name`` cannot be a caller's own header, or None."""
    lower = name.lower()
    if lower in STRUCTURED or lower.startswith("content-"):
        return "a header the worker writes or the email package rewrites; use an X- header"
    return None


CHUNK_SIZE = 25  # jobs per bulk chunk task: one SMTP session's worth


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content: bytes
    mimetype: str = "application/octet-stream"

    def to_dict(self) -> dict[str, str]:
        return {
            "filename": self.filename,
            "content_b64": base64.b64encode(self.content).decode("ascii"),
            "mimetype": self.mimetype,
        }

    @classmethod
    def from_dict(cls, data: Any) -> "Attachment":
        """Only inline bytes: a wire attachment never names a file to read."""
        if not isinstance(data, dict) or set(data) - {"filename", "content_b64", "mimetype"}:
            raise InvalidEmail(
                "attachments: a wire attachment is {filename, content_b64, mimetype}"
            )
        if not all(isinstance(v, str) for v in data.values()):
            raise InvalidEmail("attachments: filename, content_b64 and mimetype must be strings")
        try:
            content = base64.b64decode(data["content_b64"], validate=True)
            return cls(data["filename"], content, data.get("mimetype") or cls.mimetype)
        except (KeyError, TypeError, binascii.Error) as exc:
            raise InvalidEmail(f"attachments: malformed wire attachment ({exc})") from None


@dataclass(frozen=True, slots=True)
class EmailJob:
    """One email to send. Addresses may carry a display name: ``"Ann <ann@example.com>"``."""

    to: tuple[str, ...]
    subject: str
    text: str | None = None
    html: str | None = None
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    reply_to: tuple[str, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)
    attachments: tuple[Attachment, ...] = ()
    priority: str = "normal"
    idempotency_key: str | None = None
    batch_id: str | None = None
    queued_at: float | None = None  # epoch seconds, set when first published: MAX_JOB_AGE_S

    @property
    def recipients(self) -> list[str]:
        """Envelope recipients (To, Cc and Bcc), bare addresses, each once."""
        seen: dict[str, None] = {}
        for value in (*self.to, *self.cc, *self.bcc):
            seen.setdefault(parseaddr(value)[1], None)
        return list(seen)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"to": list(self.to), "subject": self.subject}
        for name in ("text", "html", "idempotency_key", "batch_id"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        for name in ("cc", "bcc", "reply_to"):
            if getattr(self, name):
                data[name] = list(getattr(self, name))
        if self.headers:
            data["headers"] = dict(self.headers)
        if self.attachments:
            data["attachments"] = [a.to_dict() for a in self.attachments]
        data["priority"] = self.priority
        if self.queued_at is not None:
            data["queued_at"] = self.queued_at
        return data

    @classmethod
    def from_dict(cls, data: Any) -> "EmailJob":
        """Decode a wire payload; a payload of the wrong shape raises ``InvalidEmail``.

        Payloads come out of Redis or through Flower's API, so every field's type is
        checked here, on the worker's side, whatever the producer checked before.
        """
        if not isinstance(data, dict):
            raise InvalidEmail(f"malformed job payload: expected an object, got {_kind(data)}")
        if unknown := set(data) - WIRE_KEYS:
            raise InvalidEmail(f"malformed job payload: unknown key(s) {sorted(unknown)}")
        if not data.get("to"):
            raise InvalidEmail("malformed job payload: 'to' must list at least one address")
        attachments = _field(data, "attachments", list, [])
        job = cls(
            to=_strings(data, "to"),
            subject=_field(data, "subject", str, None, required=True),
            text=_field(data, "text", str, None),
            html=_field(data, "html", str, None),
            cc=_strings(data, "cc"),
            bcc=_strings(data, "bcc"),
            reply_to=_strings(data, "reply_to"),
            headers=_headers(data),
            attachments=tuple(Attachment.from_dict(a) for a in attachments),
            priority=_priority(data),
            idempotency_key=_field(data, "idempotency_key", str, None),
            batch_id=_field(data, "batch_id", str, None),
            queued_at=_queued_at(data),
        )
        if job.text is None and job.html is None:
            raise InvalidEmail("malformed job payload: no body (text or html)")
        _header_safe(job)
        return job

    def tracking_info(self) -> dict[str, Any]:
        """What the tracking store keeps of a job: no bodies, no attachments."""
        return {
            "to": self.to, "cc": self.cc, "bcc": self.bcc, "subject": self.subject,
            "priority": self.priority, "idempotency_key": self.idempotency_key,
            "batch_id": self.batch_id,
        }  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """A short, secret-free description for logs and Flower: no bodies, no attachment bytes."""
        info: dict[str, Any] = {"to": list(self.to), "subject": self.subject[:120]}
        if self.cc:
            info["cc"] = len(self.cc)
        if self.bcc:
            info["bcc"] = len(self.bcc)
        for name in ("text", "html"):
            if getattr(self, name):
                info[name] = f"<{len(getattr(self, name))} chars>"
        if self.attachments:
            info["attachments"] = [f"{a.filename} ({len(a.content)} B)" for a in self.attachments]
        info["priority"] = self.priority
        return info


def stamped(job: EmailJob) -> EmailJob:
    """The job with the time it was first queued, which ``MAX_JOB_AGE_S`` counts from."""
    return job if job.queued_at is not None else replace(job, queued_at=time.time())


def chunk_item(job_id: str, job: EmailJob) -> dict[str, Any]:
    """One job as a bulk chunk (``emailq.send_many``) carries it."""
    return {"id": job_id, "job": job.to_dict()}


WIRE_KEYS = frozenset(EmailJob.__dataclass_fields__)


def _kind(value: Any) -> str:
    return type(value).__name__


def _field(data: dict, name: str, kind: type, default: Any, *, required: bool = False) -> Any:
    if name not in data or data[name] is None:
        if required:
            raise InvalidEmail(f"malformed job payload: {name!r} is missing")
        return default
    if not isinstance(data[name], kind):
        raise InvalidEmail(
            f"malformed job payload: {name!r} must be {kind.__name__}, got {_kind(data[name])}"
        )
    return data[name]


def _strings(data: dict, name: str) -> tuple[str, ...]:
    items = _field(data, name, list, [])
    if not all(isinstance(item, str) for item in items):
        raise InvalidEmail(f"malformed job payload: {name!r} must be a list of strings")
    return tuple(items)


def _headers(data: dict) -> dict[str, str]:
    headers = _field(data, "headers", dict, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise InvalidEmail("malformed job payload: 'headers' must map strings to strings")
    return dict(headers)


def _priority(data: dict) -> str:
    priority = data.get("priority") or "normal"
    if priority not in PRIORITIES:
        raise InvalidEmail(f"malformed job payload: priority {priority!r} is not one of {QUEUES}")
    return priority


def payload_summary(task: str, kwargs: Any) -> dict[str, Any]:
    """What Flower and the logs show of a task's payload: no bodies, no attachment bytes.

    Works on any shape, since a payload may come from Flower's API or a damaged queue.
    """
    if not isinstance(kwargs, dict):
        return {"malformed": type(kwargs).__name__}
    if task == "emailq.send_many":
        jobs = kwargs.get("jobs")
        first = jobs[0] if isinstance(jobs, list) and jobs else {}
        batch = first.get("job", {}).get("batch_id") if isinstance(first, dict) else None
        return {"batch_id": batch, "jobs": len(jobs) if isinstance(jobs, list) else None}
    try:
        return EmailJob.from_dict(kwargs).summary()
    except InvalidEmail:
        return {"malformed": sorted(str(k) for k in kwargs)[:20]}


def _header_safe(job: EmailJob) -> None:
    """No line break of any kind, nor NUL, in what becomes a header or an SMTP command."""
    values = [
        ("subject", job.subject), *(("address", a) for a in (*job.to, *job.cc, *job.bcc)),
        *(("reply_to", a) for a in job.reply_to), *(("headers", h) for h in job.headers),
        *(("headers", v) for v in job.headers.values()),
        *(("attachments", a.filename) for a in job.attachments),
        *(("attachments", a.mimetype) for a in job.attachments),
    ]  # fmt: skip
    for name, value in values:
        if problem := header_problem(value):
            raise InvalidEmail(f"malformed job payload: {problem} in {name}")
    for attachment in job.attachments:
        if not MIMETYPE.fullmatch(attachment.mimetype):
            raise InvalidEmail(
                "malformed job payload: an attachment's mimetype is not type/subtype"
            )
    for name in job.headers:
        if problem := custom_header_problem(name):
            raise InvalidEmail(f"malformed job payload: headers: {name!r} is {problem}")
    for body in (job.text, job.html):  # what the producer refuses in a body, no more
        if body is not None and ("\0" in body or not _encodable(body)):
            raise InvalidEmail("malformed job payload: a body holds a lone surrogate or NUL")


def _queued_at(data: dict) -> float | None:
    value = data.get("queued_at")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise InvalidEmail("malformed job payload: 'queued_at' must be epoch seconds")
    return None if value is None else float(value)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
