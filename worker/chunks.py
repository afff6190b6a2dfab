"""Several jobs in one task: the jobs of a bulk send, sent one after another.

Each job keeps its own id, ledger entry, Message-ID and tracking; only Celery's
per-task cost (fetch, events, result, ack) is shared. A job that does not go out
leaves the chunk: it is handed to the single-job task with the delay its error calls
for, or dead-lettered, so one bad address never holds up or repeats the others.
"""

import logging
import math
import time
import traceback
from collections.abc import Callable
from typing import Any

import redis
from kombu.exceptions import OperationalError

from worker.delivery import deliver, shared
from worker.errors import ConfigurationError, JobBusy, RateLimited, TransientError
from worker.job import EmailJob

log = logging.getLogger(__name__)

# How often a chunk on the normal queue asks whether alerts are waiting; when they are,
# it stops and hands its remaining jobs back, so its thread is free for the alert.
YIELD_CHECK_S = 0.05
SIZE = 25  # jobs per chunk: one SMTP session's worth (MAX_MESSAGES_PER_CONNECTION)
# Infrastructure down: the whole chunk is retried; the ledger skips what already went out.
INFRASTRUCTURE = (redis.RedisError, OperationalError)

HandOff = Callable[..., Any]  # hand_off(job_id, payload, countdown=, retries=, exc=)
DeadLetter = Callable[..., Any]  # dead_letter(job_id, payload, exc, traceback=)


def entry(job_id: str, job: EmailJob) -> dict[str, Any]:
    """One job as a chunk carries it."""
    return {"id": job_id, "job": job.to_dict()}


def deliver_chunk(
    jobs: list[dict[str, Any]],
    *,
    settings: Any,
    backoff: Callable[[int], int],
    hand_off: HandOff,
    dead_letter: DeadLetter,
    should_yield: Callable[[], bool] | None = None,
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Send the jobs in order; returns counts (sent, handed off, dead) and the jobs left.

    Jobs are left only when ``should_yield`` said so between two jobs (checked at most
    every ``YIELD_CHECK_S``); the caller publishes them again as a new chunk.
    """
    sender, ledger, limiter = shared()
    counts = {"sent": 0, "handed_off": 0, "dead": 0}
    checked = time.monotonic()
    for index, item in enumerate(jobs):
        if should_yield is not None and index and time.monotonic() - checked >= YIELD_CHECK_S:
            checked = time.monotonic()
            if should_yield():
                return counts, jobs[index:]
        job_id, payload = item["id"], item["job"]
        try:
            deliver(
                EmailJob.from_dict(payload), job_id=job_id, sender=sender, ledger=ledger,
                settings=settings, limiter=limiter,
            )  # fmt: skip
            counts["sent"] += 1
        except INFRASTRUCTURE:
            raise
        except Exception as exc:  # noqa: BLE001 - every other outcome is settled per job
            countdown = _countdown(exc, backoff)
            if countdown is None:
                dead_letter(job_id, payload, exc, traceback=traceback.format_exc())
                counts["dead"] += 1
            else:
                retries = 1 if isinstance(exc, TransientError) else 0
                hand_off(job_id, payload, countdown=countdown, retries=retries, exc=exc)
                counts["handed_off"] += 1
    return counts, []


def _countdown(exc: Exception, backoff: Callable[[int], int]) -> int | None:
    """Seconds until the job's next try, or None when it is dead (permanent, lost, a bug)."""
    match exc:
        case TransientError():
            return backoff(1)
        case JobBusy():
            return 30
        case RateLimited():
            return math.ceil(exc.wait_s)
        case ConfigurationError():
            return backoff(getattr(exc, "attempts", 1))
    return None
