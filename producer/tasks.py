"""``enqueue_email``: the public task. Validates before publishing; delivers in the worker."""

from typing import Any

from celery import Task
from celery.signals import worker_process_shutdown, worker_shutdown

from config import get_settings
from producer.validation import validate_job
from worker.celery import app
from worker.delivery import close_shared_sender, deliver, shared_sender
from worker.errors import InvalidEmail
from worker.job import EmailJob


class EmailTask(Task):
    """A task whose ``apply_async`` refuses bad input and routes by priority."""

    def apply_async(self, args=None, kwargs=None, task_id=None, **options):  # noqa: D102
        if args:
            raise InvalidEmail("enqueue_email takes keyword arguments only")
        job = validate_job(kwargs or {}, get_settings())
        options.setdefault("queue", job.priority)  # the queues are named after the priorities
        options.setdefault("kwargsrepr", repr(job.summary()))  # what Flower shows: no bodies
        return super().apply_async(kwargs=job.to_dict(), task_id=task_id, **options)


@app.task(bind=True, base=EmailTask, name="emailq.send")
def enqueue_email(self: EmailTask, **payload: Any) -> dict[str, Any]:
    job = EmailJob.from_dict(payload)
    return deliver(job, job_id=self.request.id, sender=shared_sender(), settings=get_settings())


@worker_process_shutdown.connect
@worker_shutdown.connect
def _close_connections(**_: Any) -> None:
    close_shared_sender()
