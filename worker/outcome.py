"""Judging one attempt: what a send achieved, what comes next, and the task's result.

Pure functions, so the outcome logic is tested without a worker, an SMTP server or Redis
(``tests/unit/test_outcome.py``); ``emailq.worker.delivery`` records what they decide.
"""

import smtplib
from collections.abc import Collection
from dataclasses import dataclass, field
from email.utils import parseaddr
from typing import Any

from emailq.core.errors import ConfigurationError, PermanentError, TransientError
from emailq.core.job import EmailJob
from emailq.worker.classify import classify, classify_reply
from emailq.worker.ledger import JobState
from emailq.worker.sender import SendResult

Reply = tuple[int, str]


@dataclass(frozen=True)
class Outcome:
    """What one attempt achieved, and what to raise once it is recorded."""

    attempt: dict[str, Any]  # the attempt as the ledger and the tracking store keep it
    delivered: tuple[str, ...] = ()  # accepted by the server in this attempt
    failed: dict[str, Reply] = field(default_factory=dict)  # refused for good in this attempt
    final: str | None = None  # "sent" once every recipient has the message
    error: Exception | None = None  # raised after recording; None means done


def judge_result(
    result: SendResult,
    *,
    earlier_failed: dict[str, Reply],
    earlier_delivered: set[str] | frozenset[str] = frozenset(),
    hidden: Collection[str] = (),
) -> Outcome:
    """The outcome of a send the server took: who has it, who was refused, what comes next.

    The error names the recipients it concerns with their replies; ``hidden`` ones (Bcc)
    only as a count.

    - everyone has it: ``sent``;
    - some deferred (4xx): a ``TransientError`` for them alone, carrying in ``permanent``
      those refused for good in this attempt, who are dead-lettered at once;
    - the rest refused for good, someone has it: ``partial``, and no error;
    - refused for good, nobody has it: a ``PermanentError``.
    """
    transient: dict[str, Reply] = {}
    permanent: dict[str, Reply] = {}
    for rcpt, (code, text) in result.refused.items():
        kind = classify_reply(code, text, stage="rcpt")
        (permanent if kind is PermanentError else transient)[rcpt] = (code, text)
    clean = not transient and not permanent and not earlier_failed
    someone = bool(result.accepted) or bool(earlier_delivered)
    attempt = {
        "outcome": "sent" if clean else "partial",
        "smtp_code": result.reply[0],
        "smtp_text": result.reply[1],
        "recipients": list(result.accepted),
        "refused": {r: list(v) for r, v in result.refused.items()},
    }
    error: Exception | None = None
    final = "sent" if clean else None
    if transient:
        error = TransientError.refusing(transient, hidden=hidden)
        error.permanent = permanent  # type: ignore[attr-defined] - dead-lettered now
    elif (permanent or earlier_failed) and someone:
        final = "partial"
    elif permanent or earlier_failed:
        error = PermanentError.refusing({**earlier_failed, **permanent}, hidden=hidden)
    return Outcome(attempt, tuple(result.accepted), permanent, final, error)


def relay_failure(exc: BaseException, error: Exception | None) -> bool:
    """The relay itself failed (no connection, a dropped one), not this message."""
    if not isinstance(error, TransientError):
        return False
    if isinstance(exc, smtplib.SMTPConnectError):  # a 4xx greeting
        return True
    replied = (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused)
    return isinstance(exc, OSError) and not isinstance(exc, replied)


def judge_error(
    exc: BaseException, pending: list[str], *, attempts: int, hidden: Collection[str] = ()
) -> Outcome | None:
    """The outcome of a send that raised; None when the error is a bug, not a delivery failure."""
    error = classify(exc, hidden=hidden)
    if error is None:
        return None
    if isinstance(error, ConfigurationError):
        error.attempts = attempts  # type: ignore[attr-defined] - spaces out its deferrals
        kind = "configuration"
    else:
        kind = "permanent" if isinstance(error, PermanentError) else "transient"
    failed: dict[str, Reply] = {}
    if isinstance(error, PermanentError):
        failed = dict(error.recipients) or {
            r: (error.smtp_code or 0, error.smtp_text or str(error)) for r in pending
        }
    attempt = {
        "outcome": kind,
        "smtp_code": getattr(error, "smtp_code", None),
        "smtp_text": getattr(error, "smtp_text", None),
        "error": str(error),
        "recipients": pending,
    }
    return Outcome(attempt, failed=failed, error=error)


def report(
    job_id: str, sender_domain: str, state: JobState, *, job: EmailJob,
    hidden: frozenset[str] | None = None, **extra: Any,
) -> dict[str, Any]:  # fmt: skip
    """The task's result: the Message-ID and who has the message.

    Results are kept for days and shown by Flower, so Bcc recipients appear as a count.
    """
    hidden = bcc_only(job) if hidden is None else hidden
    return {
        "message_id": f"<{job_id}@{sender_domain}>",
        "accepted": sorted(state.delivered - hidden),
        "refused": {r: list(reply) for r, reply in state.failed.items() if r not in hidden},
        "bcc": {
            "accepted": len(state.delivered & hidden),
            "refused": len(set(state.failed) & hidden),
        },
        **extra,
    }


def bcc_only(job: EmailJob) -> frozenset[str]:
    """Recipients only on Bcc: results and their errors count them, never name them."""
    return frozenset(parseaddr(a)[1] for a in job.bcc) - {
        parseaddr(a)[1] for a in (*job.to, *job.cc)
    }
