"""``EmailTask``: validate, de-duplicate, route by priority, park delays, then publish."""

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Task
from celery.utils import uuid

from config import get_settings
from producer.validation import validate_job
from worker import delayed
from worker.errors import InvalidEmail
from worker.job import EmailJob
from worker.recorder import recorder
from worker.store import redis_client

IDEMPOTENCY_PREFIX = "emailq:idempotency:"


class EmailTask(Task):
    """A task whose ``apply_async`` refuses bad input before anything is published."""

    def apply_async(self, args=None, kwargs=None, task_id=None, **options):  # noqa: D102
        if args:
            raise InvalidEmail("enqueue_email takes keyword arguments only")
        job = validate_job(kwargs or {}, get_settings())
        return self.publish(job, task_id=task_id, **options)

    def publish(self, job: EmailJob, *, task_id: str | None = None, **options: Any) -> Any:
        """Publish an already validated job (``enqueue_bulk`` validates them all first)."""
        task_id = task_id or uuid()
        if job.idempotency_key:
            first = claim_idempotency_key(job.idempotency_key, task_id)
            if first != task_id:  # the same key within the window: that job is this job
                return self.AsyncResult(first)
        options.setdefault("queue", job.priority)  # the queues are named after the priorities
        options.setdefault("kwargsrepr", repr(job.summary()))  # what Flower shows: no bodies
        due = _due(options.pop("countdown", None), options.pop("eta", None))
        try:
            if due is not None:
                result = self._park(job, task_id, due, options)
            else:
                result = super().apply_async(kwargs=job.to_dict(), task_id=task_id, **options)
        except BaseException:
            if job.idempotency_key:
                release_idempotency_key(job.idempotency_key, task_id)
            raise
        if not options.get("retries"):
            recorder().emit("queued", result.id, job.tracking_info())
        return result

    def _park(self, job: EmailJob, task_id: str, due: float, options: dict) -> Any:
        entry = {
            "task_id": task_id,
            "kwargs": job.to_dict(),
            "queue": options["queue"],
            "retries": options.get("retries", 0),
            "expires": _expires_at(options.get("expires"), due),
        }
        delayed.park(redis_client(), entry, due)
        return self.AsyncResult(task_id)


def _due(countdown: float | None, eta: datetime | str | None) -> float | None:
    if eta is not None:
        return (datetime.fromisoformat(eta) if isinstance(eta, str) else eta).timestamp()
    if countdown:
        return time.time() + float(countdown)
    return None


def _expires_at(expires: float | datetime | str | None, due: float) -> str | None:
    """Celery's ``expires`` as an absolute time, so a parked job keeps its deadline."""
    if expires is None:
        return None
    if isinstance(expires, int | float):  # seconds from now, as Celery counts them
        return (datetime.now(UTC) + timedelta(seconds=expires)).isoformat()
    return expires.isoformat() if isinstance(expires, datetime) else expires


def claim_idempotency_key(key: str, task_id: str) -> str:
    """The job id that owns ``key``: ``task_id`` if it is the first within the window."""
    client = redis_client()
    name = IDEMPOTENCY_PREFIX + key
    window = int(get_settings().idempotency_window_s)
    if client.set(name, task_id, nx=True, ex=window):
        return task_id
    owner = client.get(name)
    return owner.decode() if owner else task_id


def release_idempotency_key(key: str, task_id: str) -> None:
    client = redis_client()
    name = IDEMPOTENCY_PREFIX + key
    if (client.get(name) or b"").decode() == task_id:
        client.delete(name)
