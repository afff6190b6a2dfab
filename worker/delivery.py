"""Deliver one job: build its message and hand it to the sender. No Celery in here."""

import logging
import threading
import time
from typing import Any

from config import Settings, get_settings
from worker.job import EmailJob
from worker.message import build_message
from worker.sender import SMTPSender

log = logging.getLogger(__name__)


def deliver(
    job: EmailJob, *, job_id: str, sender: SMTPSender, settings: Settings
) -> dict[str, Any]:
    """Send ``job`` and report per recipient; raises the sender's errors unchanged."""
    from_ = settings.sender
    message = build_message(job, job_id=job_id, sender=from_)
    result = sender.send(message, sender=from_.addr_spec, recipients=job.recipients)
    for rcpt, (code, text) in result.refused.items():
        log.warning("job %s: recipient %s refused: %s %s", job_id, rcpt, code, text)
    log.info(
        "job %s sent to %d recipient(s), %d refused: %s %s",
        job_id, len(result.accepted), len(result.refused), *result.reply,
    )  # fmt: skip
    return {
        "message_id": message["Message-ID"],
        "accepted": list(result.accepted),
        "refused": {rcpt: list(reply) for rcpt, reply in result.refused.items()},
        "sent_at": time.time(),
    }


_sender: SMTPSender | None = None
_sender_lock = threading.Lock()


def shared_sender() -> SMTPSender:
    """The process's sender; its pool is shared by every thread of the worker."""
    global _sender
    with _sender_lock:
        if _sender is None:
            _sender = SMTPSender(get_settings())
        return _sender


def close_shared_sender() -> None:
    """QUIT the process's SMTP connections, if it ever opened any."""
    with _sender_lock:
        if _sender is not None:
            _sender.close()
