"""``EmailTask``: validate, de-duplicate, route by priority, park delays, then publish."""

from typing import Any

from celery import Task
from celery.utils import uuid

from emailq.config import get_settings
from emailq.core import delayed, events
from emailq.core.errors import InvalidEmail
from emailq.core.job import EmailJob
from emailq.core.keys import IDEMPOTENCY
from emailq.core.store import redis_client
from emailq.core.validation import validate_job

DIRECT_CALL = (
    "enqueue_email(...) only queues a job: call enqueue_email.delay(...) or "
    "enqueue_email.apply_async(kwargs=...); a worker (celery -A emailq.worker worker) sends it"
)


class EmailTask(Task):
    """A publish-only task: ``apply_async`` refuses bad input before anything is published.

    Its body never runs here: the worker registers the real one under the same name.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(DIRECT_CALL)

    def apply(self, *args: Any, **kwargs: Any) -> Any:  # Celery's local, eager execution
        raise TypeError(DIRECT_CALL)

    def apply_async(self, args=None, kwargs=None, task_id=None, **options):  # noqa: D102
        if args:
            raise InvalidEmail("enqueue_email takes keyword arguments only")
        job = validate_job(kwargs or {}, get_settings(), read_files=True)
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
        due = delayed.due_at(options.pop("countdown", None), options.pop("eta", None))
        try:
            if due is not None:
                delayed.park(
                    redis_client(), task_id=task_id, kwargs=job.to_dict(), queue=options["queue"],
                    due=due, expires=options.get("expires"),
                )  # fmt: skip
                result = self.AsyncResult(task_id)
            else:
                result = super().apply_async(kwargs=job.to_dict(), task_id=task_id, **options)
        except BaseException:
            if job.idempotency_key:
                release_idempotency_key(job.idempotency_key, task_id)
            raise
        events.push(redis_client(), [events.event("queued", result.id, job.tracking_info())])
        return result


def claim_idempotency_key(key: str, task_id: str) -> str:
    """The job id that owns ``key``: ``task_id`` if it is the first within the window."""
    client = redis_client()
    name = IDEMPOTENCY + key
    window = int(get_settings().idempotency_window_s)
    if client.set(name, task_id, nx=True, ex=window):
        return task_id
    owner = client.get(name)
    return owner.decode() if owner else task_id


def release_idempotency_key(key: str, task_id: str) -> None:
    client = redis_client()
    name = IDEMPOTENCY + key
    if (client.get(name) or b"").decode() == task_id:
        client.delete(name)
