"""Several jobs in one task: the jobs of a bulk send, sent one after another.

Each job keeps its own id, ledger entry, Message-ID and tracking; only Celery's
per-task cost (fetch, events, result, ack) is shared. A job that does not go out
leaves the chunk as ``emailq.worker.retry.decide`` says: handed to the single-job
task with its delay, or dead-lettered, so one bad address never holds up or repeats
the others. When Redis stops answering, the chunk stops: the jobs from the one that
met the outage on go back together, and the ledger skips any that already went out.
"""

import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

from celery.utils import uuid

from emailq.config import Settings
from emailq.core.errors import InvalidEmail
from emailq.core.job import EmailJob
from emailq.worker.delivery import prepare, shared
from emailq.worker.retry import Decision, decide
from emailq.worker.stream import Stream

log = logging.getLogger(__name__)

# How often a chunk on the normal queue asks whether alerts are waiting; when they are,
# the chunk stops between two jobs and queues the rest behind the alert.
YIELD_CHECK_S = 0.05

HandOff = Callable[[str, dict, Decision, Exception], Any]  # hand_off(job_id, payload, ...)
DeadLetter = Callable[..., Any]  # dead_letter(job_id, payload, exc, reason=, traceback=)


class Interrupted(Exception):
    """Redis or the database stopped answering mid-chunk; ``left`` holds the jobs not settled."""

    def __init__(self, error: Exception, left: list[Any]) -> None:
        super().__init__(str(error))
        self.error = error
        self.left = left


def deliver_chunk(
    jobs: list[Any],
    *,
    settings: Settings,
    hand_off: HandOff,
    dead_letter: DeadLetter,
    should_yield: Callable[[], bool] | None = None,
    bury_refused: Callable[[str, dict], Any],
) -> tuple[dict[str, int], list[Any]]:
    """Send the jobs in order; returns counts (sent, handed off, dead) and the jobs left.

    Jobs are left only when ``should_yield`` said so between two jobs (checked at most
    every ``YIELD_CHECK_S``); the caller publishes them again as a new chunk. On a
    server that offers PIPELINING, each job's envelope goes out with the previous job's
    data (``emailq.worker.stream``); every job is still settled on its own, in order.
    """
    common = shared()
    counts = {"sent": 0, "handed_off": 0, "dead": 0}

    def settle(index: int, outcome: dict[str, Any] | Exception) -> None:
        job_id, payload = jobs[index]["id"], jobs[index]["job"]
        try:
            if isinstance(outcome, Exception):
                raise outcome
            if outcome["status"] == "partial" and not outcome.get("duplicate"):
                bury_refused(job_id, payload)
            counts["sent"] += 1
        except Exception as exc:  # noqa: BLE001 - every outcome is settled by the one decision
            if getattr(exc, "permanent", None):  # refused for good while others are retried
                bury_refused(job_id, payload)
            decision = decide(exc, retries=0, settings=settings)
            if decision.action == "wait":
                raise Interrupted(exc, jobs[index:]) from exc
            if decision.action == "dead":
                dead_letter(
                    job_id, payload, exc, reason=decision.reason, traceback=traceback.format_exc()
                )
                counts["dead"] += 1
            else:
                hand_off(job_id, payload, decision, exc)
                counts["handed_off"] += 1

    stream = Stream(common.sender, settle)
    checked = time.monotonic()
    try:
        for index, item in enumerate(jobs):
            if should_yield is not None and index and time.monotonic() - checked >= YIELD_CHECK_S:
                checked = time.monotonic()
                if should_yield():
                    stream.flush()
                    return counts, jobs[index:]
            if not _well_formed(item):  # from Redis: untrusted; settled alone, never stops the rest
                stream.flush()
                error = InvalidEmail("malformed chunk item: expected {'id': str, 'job': object}")
                dead_letter(uuid(), item, error, reason="invalid", traceback=None)
                counts["dead"] += 1
                continue
            try:
                job = EmailJob.from_dict(item["job"])
                ready = prepare(
                    job, job_id=item["id"], ledger=common.ledger, settings=settings,
                    limiter=common.limiter, circuit=common.circuit,
                )  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - settled by the one decision, in order
                stream.flush()
                settle(index, exc)
                continue
            if isinstance(ready, dict):  # already sent
                stream.flush()
                settle(index, ready)
                continue
            stream.send(index, ready)
        stream.flush()
    finally:
        stream.close()
    return counts, []


def _well_formed(item: Any) -> bool:
    return (
        isinstance(item, dict)
        and isinstance(item.get("id"), str)
        and 0 < len(item["id"]) <= 64
        and isinstance(item.get("job"), dict)
    )
