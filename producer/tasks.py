"""The tasks applications publish to. Their bodies run in ``emailq.worker``, never here."""

from typing import Any

from emailq.core.app import make_app
from emailq.producer.publishing import DIRECT_CALL, EmailTask

app = make_app()


@app.task(base=EmailTask, name="emailq.send", shared=False)
def enqueue_email(**payload: Any) -> Any:
    """Queue one email: ``enqueue_email.delay(to=..., subject=..., text=...)``."""
    raise TypeError(DIRECT_CALL)


@app.task(name="emailq.send_many", shared=False)
def send_many(jobs: list[dict[str, Any]]) -> Any:
    """A chunk of a bulk send; published by ``enqueue_bulk``."""
    raise TypeError("send_many only queues a chunk; enqueue_bulk(...) publishes it")
