"""The one retry decision: what happens to a job after any failure, single or in a chunk.

Dramatiq's ``middleware/retries.py`` decides every retry in one function; this is ours.
``decide`` is pure: the same failure at the same retry count always gets the same
answer, so the task body and the failure signal cannot disagree.
"""

import math
from dataclasses import dataclass
from typing import Literal

import redis
from celery.utils.time import get_exponential_backoff_interval
from kombu.exceptions import OperationalError
from sqlalchemy.exc import SQLAlchemyError

from emailq.config import Settings
from emailq.core.errors import (
    CircuitOpen,
    ConfigurationError,
    InvalidEmail,
    JobBusy,
    JobExpired,
    PermanentError,
    RateLimited,
    RelayUnavailable,
    TransientError,
)

# Another worker holds the job's lock: look again when it ends, and at most this long after.
BUSY_RETRY_S = 15  # a dead worker's lock is gone by then (LOCK_TTL_S)
# Redis (the broker, the ledger, the limiter) or the database did not answer. Not the
# job's fault: it never spends the retry budget and is never dead-lettered for it.
INFRASTRUCTURE = (redis.RedisError, OperationalError, SQLAlchemyError)
INFRASTRUCTURE_RETRY_S = 5  # once Redis answers again, the job goes back out this soon

Action = Literal["retry", "defer", "dead", "wait"]


@dataclass(frozen=True, slots=True)
class Decision:
    """``retry``: try again after ``countdown``, one more retry spent.
    ``defer``: try again after ``countdown``, the budget untouched.
    ``dead``: dead-letter with ``reason``.
    ``wait``: infrastructure is down; keep the job until Redis answers, budget untouched.
    """

    action: Action
    countdown: int = 0
    reason: str | None = None

    @property
    def spends_budget(self) -> bool:
        return self.action == "retry"


def backoff(attempt: int, settings: Settings) -> int:
    """Seconds before retry number ``attempt`` (1-based): exponential, capped, jittered."""
    return get_exponential_backoff_interval(
        factor=settings.retry_backoff_base_s, retries=max(0, attempt - 1),
        maximum=settings.retry_backoff_max_s, full_jitter=settings.retry_jitter,
    )  # fmt: skip


def decide(exc: BaseException | None, *, retries: int, settings: Settings) -> Decision:
    """The decision for ``exc``, raised by a job that has been retried ``retries`` times."""
    match exc:
        case InvalidEmail():
            return Decision("dead", reason="invalid")
        case JobExpired():
            return Decision("dead", reason="expired")
        case PermanentError():
            return Decision("dead", reason="permanent")
        case RelayUnavailable() | CircuitOpen():  # the relay's fault, not the job's
            return Decision("defer", max(1, math.ceil(exc.wait_s)))
        case TransientError() if retries >= settings.max_retries:
            return Decision("dead", reason="exhausted")
        case TransientError():
            return Decision("retry", backoff(retries + 1, settings))
        case JobBusy():
            # A dead worker's lock is gone once its TTL runs out; a live one renews it, and
            # the job is looked at again then.
            return Decision("defer", min(BUSY_RETRY_S, math.ceil(exc.wait_s) + 1))
        case RateLimited():  # not a failure: the job waits for room in the window
            return Decision("defer", math.ceil(exc.wait_s))
        case ConfigurationError():
            # Wrong credentials or certificates are not the job's fault: keep it, without
            # spending its budget, until the operator fixes the setting.
            return Decision("defer", backoff(getattr(exc, "attempts", 1), settings))
        case _ if isinstance(exc, INFRASTRUCTURE):
            return Decision("wait", INFRASTRUCTURE_RETRY_S)
    return Decision("dead", reason="crashed")  # a bug, or a worker lost mid-send too often
