"""``enqueue_email``: the public task. Validates before publishing; delivers in the worker."""

import logging
import math
from typing import Any

from celery.exceptions import Retry
from celery.signals import (
    task_failure,
    task_retry,
    task_revoked,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from celery.utils.time import get_exponential_backoff_interval

from config import get_settings
from producer.publishing import EmailTask
from worker import chunks, deadletter, delayed
from worker.celery import app
from worker.delivery import close_shared_sender, deliver, shared
from worker.errors import ConfigurationError, JobBusy, RateLimited, TransientError
from worker.job import EmailJob
from worker.recorder import recorder
from worker.store import redis_client

log = logging.getLogger(__name__)
settings = get_settings()


@app.task(
    bind=True,
    base=EmailTask,
    name="emailq.send",
    autoretry_for=(TransientError,),
    retry_backoff=settings.retry_backoff_base_s,
    retry_backoff_max=settings.retry_backoff_max_s,
    retry_jitter=settings.retry_jitter,
    max_retries=settings.max_retries,
)
def enqueue_email(self: EmailTask, **payload: Any) -> dict[str, Any]:
    job = EmailJob.from_dict(payload)
    sender, ledger, limiter = shared()
    try:
        return deliver(
            job, job_id=self.request.id, sender=sender, ledger=ledger, settings=settings,
            limiter=limiter,
        )  # fmt: skip
    except JobBusy as exc:
        raise _again(self, payload, countdown=30, exc=exc) from None
    except RateLimited as exc:  # not a failure: the job waits for room in the window
        raise _again(self, payload, countdown=math.ceil(exc.wait_s), exc=exc) from None
    except ConfigurationError as exc:
        # Wrong credentials or certificates are not the job's fault: keep it, without
        # spending its retry budget, until the operator fixes the setting.
        countdown = _backoff(getattr(exc, "attempts", 1))
        log.critical("job %s: %s; retrying in %ss", self.request.id, exc, countdown)
        raise _again(self, payload, countdown=countdown, exc=exc) from None


def _backoff(attempt: int) -> int:
    """The same schedule autoretry uses for transient errors."""
    return get_exponential_backoff_interval(
        factor=settings.retry_backoff_base_s, retries=max(0, attempt - 1),
        maximum=settings.retry_backoff_max_s, full_jitter=settings.retry_jitter,
    )  # fmt: skip


def _again(
    task: EmailTask, payload: dict, *, countdown: int, exc: Exception | None = None
) -> Retry:
    """Re-publish the job later with the same id and retry count; returns Celery's Retry."""
    task.apply_async(
        kwargs=payload, task_id=task.request.id, countdown=countdown, retries=task.request.retries
    )
    return Retry(exc=exc, when=countdown)


@app.task(bind=True, name="emailq.send_many", max_retries=None)
def send_many(self, jobs: list[dict[str, Any]]) -> dict[str, int]:
    """A chunk of a bulk send (``worker.chunks``): several jobs, each with its own id."""
    queue = (self.request.delivery_info or {}).get("routing_key") or "normal"
    try:
        counts, left = chunks.deliver_chunk(
            jobs, settings=settings, backoff=_backoff, hand_off=_hand_off,
            dead_letter=dead_letter, should_yield=_alerts_waiting if queue != "high" else None,
        )  # fmt: skip
    except chunks.INFRASTRUCTURE as exc:  # Redis is down: the whole chunk waits for it
        raise self.retry(exc=exc, countdown=_backoff(self.request.retries + 1)) from None
    if left:  # alerts are waiting: the rest of the chunk queues again behind them
        shown = {"batch_id": left[0]["job"].get("batch_id"), "jobs": len(left)}
        send_many.apply_async(kwargs={"jobs": left}, queue=queue, kwargsrepr=repr(shown))
        counts["requeued"] = len(left)
    return counts


def _alerts_waiting() -> bool:
    return bool(redis_client().llen("high"))


def _hand_off(job_id: str, payload: dict, *, countdown: int, retries: int, exc: Exception) -> None:
    """A chunk's job that did not go out continues as a single job, with the same id."""
    enqueue_email.apply_async(kwargs=payload, task_id=job_id, countdown=countdown, retries=retries)
    recorder().emit("retrying", job_id, payload, attempts=retries + 1, last_error=str(exc))


@task_failure.connect
def _dead_letter(sender=None, task_id=None, exception=None, kwargs=None, einfo=None, **_):
    """Every failed job, in the task body or around it, ends in the dead-letter queue."""
    if getattr(sender, "name", None) == enqueue_email.name:
        dead_letter(task_id, kwargs or {}, exception, traceback=getattr(einfo, "traceback", None))


def dead_letter(
    task_id: str, kwargs: dict, exception: BaseException | None, *, traceback: str | None = None
) -> None:
    """Put the job in the dead-letter queue and record it as dead."""
    ledger = shared()[1]
    state = ledger.state(task_id)
    entry = deadletter.make_entry(task_id, kwargs, exception, state, traceback=traceback)
    try:
        deadletter.publish(app, entry)
    except Exception:  # noqa: BLE001 - the broker is gone: the log is the last place left
        log.critical("job %s: dead-letter publish failed; entry: %r", task_id, entry)
        raise
    ledger.record(task_id, state, final="dead")
    recorder().emit(
        "dead", task_id, kwargs, attempts=len(state.attempts), last_error=entry["error"]
    )
    log.error("job %s dead-lettered (%s): %s", task_id, entry["reason"], entry["error"])


@task_revoked.connect
def _track_expired(sender=None, request=None, expired=False, **_):
    """A job past its ``expires`` is dropped by Celery; the drop is recorded, not silent."""
    if expired and getattr(sender, "name", None) == enqueue_email.name:
        log.warning("job %s expired before it could be sent; dropped", request.id)
        recorder().emit("dead", request.id, request.kwargs or {}, last_error="expired")


@task_retry.connect
def _track_retry(sender=None, request=None, reason=None, **_):
    if getattr(sender, "name", None) == enqueue_email.name:
        recorder().emit(
            "retrying", request.id, request.kwargs or {},
            attempts=request.retries + 1, last_error=str(reason),
        )  # fmt: skip


_mover: delayed.Mover | None = None


@worker_ready.connect
def _start_mover(**_: Any) -> None:
    global _mover

    def publish(entry: dict[str, Any]) -> None:
        enqueue_email.apply_async(
            kwargs=entry["kwargs"],
            task_id=entry["task_id"],
            queue=entry["queue"],
            retries=entry.get("retries", 0),
            expires=entry.get("expires"),
        )

    _mover = delayed.Mover(redis_client(), publish).start()


@worker_shutdown.connect
def _stop_mover(**_: Any) -> None:
    if _mover is not None:
        _mover.stop()


@worker_process_shutdown.connect
@worker_shutdown.connect
def _close_connections(**_: Any) -> None:
    close_shared_sender()
    recorder().flush()
