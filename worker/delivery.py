"""Deliver one job: consult the ledger, send to whoever still needs it, record the outcome.

No Celery in here: the task turns what this raises into a retry or a dead letter.
"""

import logging
import threading
import time
from typing import Any

from config import Settings, get_settings
from worker.classify import classify, classify_reply
from worker.errors import (
    ConfigurationError,
    JobBusy,
    PermanentError,
    RateLimited,
    TransientError,
)
from worker.job import EmailJob
from worker.ledger import JobState, Ledger
from worker.ratelimit import RateLimiter, limiter_for
from worker.recorder import recorder
from worker.sender import SMTPSender
from worker.store import redis_client
from worker.wire import message_bytes

log = logging.getLogger(__name__)

# A job whose worker died this many times mid-send is a poison message (it may be
# what kills the worker); it goes to the dead-letter queue instead of looping.
MAX_LOST_STARTS = 3


class WorkerLost(Exception):
    """The job's workers died mid-send too often; it is dead-lettered as crashed."""


def lock_ttl_s(settings: Settings) -> int:
    # One send is at most a handful of SMTP commands, each bounded by the timeout.
    return int(max(60, 10 * settings.smtp_timeout_s))


def _report(job_id: str, sender_domain: str, state: JobState, **extra: Any) -> dict[str, Any]:
    return {
        "message_id": f"<{job_id}@{sender_domain}>",
        "accepted": sorted(state.delivered),
        "refused": {r: list(reply) for r, reply in state.failed.items()},
        **extra,
    }


def deliver(
    job: EmailJob,
    *,
    job_id: str,
    sender: SMTPSender,
    ledger: Ledger,
    settings: Settings,
    limiter: RateLimiter | None = None,
) -> dict[str, Any]:
    """Send ``job`` to every recipient that does not have it yet.

    Raises ``TransientError`` (some recipients should be retried), ``PermanentError``
    (some can never be reached; the rest are recorded), ``ConfigurationError``,
    ``JobBusy`` (another worker holds the job), ``RateLimited`` or ``WorkerLost``.
    """
    from_ = settings.sender
    info = job.tracking_info()
    token, state = ledger.begin(job_id, lock_ttl_s=lock_ttl_s(settings))
    if token is None:
        raise JobBusy(f"job {job_id} is being delivered by another worker")
    done = False
    try:
        if state.final is not None:
            log.info("job %s already %s; skipping the duplicate delivery", job_id, state.final)
            return _report(job_id, from_.domain, state, duplicate=True)
        if state.unrecorded_starts > MAX_LOST_STARTS:
            raise WorkerLost(f"job {job_id}: {state.unrecorded_starts - 1} workers died sending it")
        pending = [r for r in job.recipients if r not in state.delivered and r not in state.failed]
        if limiter is not None and (wait := limiter.acquire(cost=len(pending))) is not None:
            ledger.defer(job_id, token)
            done = True
            raise RateLimited(wait)
        track = recorder()
        track.emit("sending", job_id, info, attempts=len(state.attempts))
        message = message_bytes(job, job_id=job_id, sender=from_)
        try:
            result = sender.send(message, sender=from_.addr_spec, recipients=pending)
        except Exception as exc:
            error = classify(exc)
            if error is None:
                raise  # a bug: dead-lettered as crashed, with its traceback
            failed = _failed(error, pending)
            attempt = _attempt(error, pending, outcome=_outcome(error))
            ledger.record(job_id, state, failed=failed, token=token, attempt=attempt)
            track.emit("attempt", job_id, **attempt)
            done = True
            if isinstance(error, ConfigurationError):
                error.attempts = len(state.attempts)  # type: ignore[attr-defined]
            raise error from exc

        transient, permanent = {}, {}
        for rcpt, (code, text) in result.refused.items():
            kind = classify_reply(code, text, stage="rcpt")
            (permanent if kind is PermanentError else transient)[rcpt] = (code, text)
            log.warning("job %s: recipient %s refused: %s %s", job_id, rcpt, code, text)
        clean = not transient and not permanent and not state.failed
        attempt = {
            "outcome": "sent" if clean else "partial",
            "smtp_code": result.reply[0],
            "smtp_text": result.reply[1],
            "recipients": list(result.accepted),
            "refused": {r: list(v) for r, v in result.refused.items()},
        }
        ledger.record(
            job_id, state, delivered=list(result.accepted), failed=permanent, token=token,
            final="sent" if clean else None, attempt=attempt,
        )  # fmt: skip
        done = True
        track.emit("attempt", job_id, **attempt)
        if clean:
            track.emit("sent", job_id, info, attempts=len(state.attempts))
        log.info(
            "job %s sent to %d recipient(s), %d refused: %s %s",
            job_id, len(result.accepted), len(result.refused), *result.reply,
        )  # fmt: skip
        if transient:
            code, text = next(iter(transient.values()))
            raise TransientError(
                f"{len(transient)} recipient(s) deferred", smtp_code=code, smtp_text=text,
                recipients=transient,
            )  # fmt: skip
        if state.failed:
            code, text = next(iter(state.failed.values()))
            raise PermanentError(
                f"{len(state.failed)} recipient(s) refused permanently",
                smtp_code=code, smtp_text=text, recipients=dict(state.failed),
            )  # fmt: skip
        return _report(job_id, from_.domain, state, sent_at=time.time())
    finally:
        if not done:
            ledger.release(job_id, token)


def _outcome(error: Exception) -> str:
    if isinstance(error, ConfigurationError):
        return "configuration"
    return "permanent" if isinstance(error, PermanentError) else "transient"


def _failed(error: Exception, pending: list[str]) -> dict[str, tuple[int, str]]:
    """Recipients that can never get this message, by a permanent refusal."""
    if not isinstance(error, PermanentError):
        return {}
    if error.recipients:
        return dict(error.recipients)
    return {r: (error.smtp_code or 0, error.smtp_text or str(error)) for r in pending}


def _attempt(error: Exception, pending: list[str], *, outcome: str) -> dict[str, Any]:
    return {
        "outcome": outcome,
        "smtp_code": getattr(error, "smtp_code", None),
        "smtp_text": getattr(error, "smtp_text", None),
        "error": str(error),
        "recipients": pending,
    }


_shared: tuple[SMTPSender, Ledger, RateLimiter | None] | None = None
_shared_lock = threading.Lock()


def shared() -> tuple[SMTPSender, Ledger, RateLimiter | None]:
    """The process's sender, ledger and limiter; the sender's pool serves every thread."""
    global _shared
    with _shared_lock:
        if _shared is None:
            settings = get_settings()
            _shared = (SMTPSender(settings), Ledger(redis_client()), limiter_for(settings))
        return _shared


def close_shared_sender() -> None:
    """QUIT the process's SMTP connections, if it ever opened any."""
    with _shared_lock:
        if _shared is not None:
            _shared[0].close()
