"""The task bodies: decode the payload, deliver, and act on the one retry decision.

The application publishes these tasks through ``emailq.producer``; this is where they
run. Re-publishing here (a retry, a deferral, a chunk's remainder) goes straight to
the broker or the delayed set: the payload was checked when it was taken, no file is
read and no idempotency key is claimed again.
"""

import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject, Retry
from celery.utils import uuid

from emailq.config import get_settings
from emailq.core import delayed
from emailq.core.errors import (
    ConfigurationError,
    InvalidEmail,
    JobExpired,
    PermanentError,
    TransientError,
)
from emailq.core.job import EmailJob, payload_summary
from emailq.core.keys import QUEUES
from emailq.core.store import redis_client
from emailq.worker import chunks, counters, deadletter
from emailq.worker.app import app
from emailq.worker.completion import completion_for
from emailq.worker.delivery import deliver, shared
from emailq.worker.recorder import recorder
from emailq.worker.retry import INFRASTRUCTURE, Decision, decide

log = logging.getLogger(__name__)

WAIT_FOR_REDIS_S = 30.0  # how long a thread waits for Redis before giving the job back
# Failures that end in the dead-letter queue by design: refused, retries spent, invalid,
# expired. A TransientError reaches Celery only once retries are spent. Celery logs these
# at INFO without a traceback (celery.app.trace.get_log_policy); the dead-letter handler
# logs the one ERROR line. The task still ends in FAILURE: get() raises, errbacks run.
EXPECTED = (InvalidEmail, JobExpired, PermanentError, TransientError)


class WorkerTask(Task):
    """Publishes without validation; a countdown or ETA parks the job in Redis."""

    Request = "emailq.worker.request:Request"  # the delivery tag in request.delivery_info

    def apply_async(self, args=None, kwargs=None, task_id=None, **options):  # noqa: D102
        task_id = task_id or uuid()
        priority = (kwargs or {}).get("priority") if self.name == "emailq.send" else None
        queue = options.pop("queue", None) or (priority if priority in QUEUES else "normal")
        due = delayed.due_at(options.pop("countdown", None), options.pop("eta", None))
        if due is not None:
            delayed.park(
                redis_client(), task=self.name, task_id=task_id, kwargs=kwargs or {},
                queue=queue, due=due, retries=options.get("retries", 0),
                expires=options.get("expires"),
            )  # fmt: skip
            return self.AsyncResult(task_id)
        options.setdefault("kwargsrepr", repr(payload_summary(self.name, kwargs)))
        return super().apply_async(args, kwargs, task_id=task_id, queue=queue, **options)


@app.task(
    bind=True, base=WorkerTask, name="emailq.send", max_retries=None, shared=False,
    throws=EXPECTED,
)  # fmt: skip
def send(self: WorkerTask, **payload: Any) -> dict[str, Any]:
    """One email."""
    settings = get_settings()
    try:
        job = EmailJob.from_dict(payload)  # a payload of the wrong shape: dead as invalid
        common = shared()
        result = deliver(
            job, job_id=self.request.id, sender=common.sender, ledger=common.ledger,
            settings=settings, limiter=common.limiter, circuit=common.circuit,
            completion=completion_for(self),
        )  # fmt: skip
        if result["status"] == "partial" and not result.get("duplicate"):
            bury_refused(self.request.id, payload)
        return result
    except Exception as exc:
        if getattr(exc, "permanent", None):  # refused for good while others are retried
            bury_refused(self.request.id, payload)
        decision = decide(exc, retries=self.request.retries, settings=settings)
        if decision.action == "dead":
            raise  # the failure signal dead-letters it, with the same decision
        raise _again(self, payload, decision, exc) from None


@app.task(
    bind=True, base=WorkerTask, name="emailq.send_many", max_retries=None, shared=False,
    throws=EXPECTED,
)  # fmt: skip
def send_many(self: WorkerTask, jobs: list[dict[str, Any]]) -> dict[str, int]:
    """A chunk of a bulk send (``emailq.worker.chunks``): several jobs, each with its own id."""
    if not isinstance(jobs, list):
        raise InvalidEmail(f"malformed chunk: 'jobs' must be a list, got {type(jobs).__name__}")
    queue = (self.request.delivery_info or {}).get("routing_key") or "normal"
    try:
        counts, left = chunks.deliver_chunk(
            jobs, settings=get_settings(), hand_off=_hand_off, dead_letter=_bury,
            bury_refused=bury_refused,
            should_yield=_alerts_waiting if queue != "high" else None,
        )  # fmt: skip
    except chunks.Interrupted as stop:  # Redis is down: the rest of the chunk waits for it
        decision = decide(stop.error, retries=0, settings=get_settings())
        raise _again(self, {"jobs": stop.left}, decision, stop.error, queue=queue) from None
    except Exception as exc:  # before any job was settled, e.g. an unreadable SMTP_CA_FILE
        decision = decide(exc, retries=self.request.retries, settings=get_settings())
        if decision.action == "dead":
            raise
        raise _again(self, {"jobs": jobs}, decision, exc, queue=queue) from None
    if left:  # alerts are waiting: the rest of the chunk queues again behind them
        send_many.apply_async(kwargs={"jobs": left}, queue=queue)
        counts["requeued"] = len(left)
    return counts


def _again(
    task: WorkerTask, kwargs: dict, decision: Decision, exc: Exception, *, queue: str | None = None
) -> Retry:
    """Publish the job again as ``decision`` says; returns Celery's Retry to raise."""
    retries = task.request.retries + (1 if decision.spends_budget else 0)
    if decision.action == "wait" and not _redis_answers(WAIT_FOR_REDIS_S):
        # Left unacknowledged: the broker gives the job back once Redis answers.
        raise Reject(exc, requeue=True)
    if isinstance(exc, ConfigurationError):
        log.critical("job %s: %s; retrying in %ss", task.request.id, exc, decision.countdown)
    try:
        task.apply_async(
            kwargs=kwargs, task_id=task.request.id, countdown=decision.countdown,
            retries=retries, queue=queue,
        )  # fmt: skip
    except INFRASTRUCTURE:
        raise Reject(exc, requeue=True) from None
    _count_again(decision, exc)
    return Retry(exc=exc, when=decision.countdown)


def _count_again(decision: Decision, exc: BaseException) -> None:
    if decision.spends_budget:
        counters.count(redis_client(), "retried")
    else:  # held back, not the job's fault: by why (JobBusy, CircuitOpen, RateLimited...)
        counters.count(redis_client(), "deferred", type(exc).__name__)


def _redis_answers(within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    pause = 0.5
    while True:
        try:
            return bool(redis_client().ping())
        except redis.RedisError:
            if time.monotonic() + pause > deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


class _Shared:
    """One answer per ``every_s`` for all the threads of a process: a busy process asks
    Redis once per interval, not once per thread."""

    def __init__(self, ask: Callable[[], bool], every_s: float) -> None:
        self.ask, self.every_s = ask, every_s
        self._value, self._until = False, 0.0

    def __call__(self) -> bool:
        now = time.monotonic()
        if now >= self._until:  # two threads may both ask at the turn: harmless
            self._value, self._until = self.ask(), now + self.every_s
        return self._value


def _high_queue_waiting() -> bool:
    return bool(redis_client().llen("high"))


_alerts_waiting = _Shared(_high_queue_waiting, chunks.YIELD_CHECK_S)


def _hand_off(job_id: str, payload: dict, decision: Decision, exc: Exception) -> None:
    """A chunk's job that did not go out continues as a single job, with the same id."""
    retries = 1 if decision.spends_budget else 0
    send.apply_async(kwargs=payload, task_id=job_id, countdown=decision.countdown, retries=retries)
    _count_again(decision, exc)
    recorder().emit("retrying", job_id, payload, attempts=retries + 1, last_error=str(exc))


def _bury(
    job_id: str, payload: Any, exc: BaseException, *, reason: str, traceback: str | None
) -> None:
    deadletter.bury(app, job_id, payload, exc, reason=reason, traceback=traceback)


def bury_refused(job_id: str, payload: dict) -> None:
    """Dead-letter, at once, the recipients refused for good; the job itself goes on."""
    # Named, Bcc too: the entry and the tracking store are read by operators, not Flower.
    error = PermanentError.refusing(dict(shared().ledger.state(job_id).failed))
    deadletter.bury(app, job_id, payload, error, reason="permanent", over=False)
