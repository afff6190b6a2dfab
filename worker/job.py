"""The job payload: a small frozen dataclass that travels as JSON.

The wire form (``to_dict``) uses the same keywords as ``enqueue_email``, so a
payload read back from the broker or the dead-letter queue can be enqueued again
as it is. Attachment bytes travel base64-encoded under ``content_b64``.
"""

import base64
import binascii
from dataclasses import dataclass, field
from email.utils import parseaddr
from typing import Any

from worker.errors import InvalidEmail

PRIORITIES = ("high", "normal")


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
    def from_dict(cls, data: dict[str, Any]) -> "Attachment":
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
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EmailJob":
        """Decode a wire payload; structural damage raises ``InvalidEmail``."""
        try:
            return cls(
                to=tuple(data["to"]),
                subject=data["subject"],
                text=data.get("text"),
                html=data.get("html"),
                cc=tuple(data.get("cc", ())),
                bcc=tuple(data.get("bcc", ())),
                reply_to=tuple(data.get("reply_to", ())),
                headers=dict(data.get("headers", {})),
                attachments=tuple(Attachment.from_dict(a) for a in data.get("attachments", ())),
                priority=data.get("priority", "normal"),
                idempotency_key=data.get("idempotency_key"),
                batch_id=data.get("batch_id"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, InvalidEmail):
                raise
            raise InvalidEmail(f"malformed job payload: {exc!r}") from None

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
