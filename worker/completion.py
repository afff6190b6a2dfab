"""A sent job's Celery bookkeeping, written by its ledger record: the result and the ack.

After a send, Celery stores the task's result (one round trip) and acknowledges the
message (another), both after the ledger record (a third). For a job that ends with every
recipient sent, the record's script does all three at once (``Ledger.record``'s ``also``);
the backend and the QoS are told to skip their own writes (``emailq.core.backends``).

The three writes are one atomic step: a worker that dies after it leaves nothing to
redeliver, and one that dies before it leaves the job unacknowledged and unrecorded, as
before. Anything else (a failure, a retry, a partial delivery, a job sent earlier) takes
Celery's own path.
"""

from dataclasses import dataclass
from functools import cache
from typing import Any

from celery import Celery, Task, states

from emailq.core.backends import StoreSuccessOnce, skip_ack, skip_store
from emailq.worker.ledger import Also


@dataclass(frozen=True)
class Completion:
    """Where a job's result and acknowledgement go, for the task running it."""

    backend: StoreSuccessOnce
    request: Any  # Celery's task request (a Context)
    task_id: str
    tag: str
    unacked_index: str
    unacked: str

    def also(self, result: dict[str, Any]) -> Also:
        """The writes that end the job, ``result`` being what the task returns."""
        encoded = self.backend.encode_result(result, states.SUCCESS)  # type: ignore[attr-defined]
        key, value = self.backend.success_write(self.task_id, encoded, self.request)
        ttl = self.backend.expires  # type: ignore[attr-defined]
        keys = (key, self.unacked_index, self.unacked)
        return Also(keys, (value, int(ttl) if ttl else "", self.tag))

    def done(self) -> None:
        """The writes landed: Celery's backend and QoS leave this job alone."""
        skip_store(self.task_id)
        skip_ack(self.tag)


def completion_for(task: Task) -> Completion | None:
    """The task's completion, or None where Celery must write the result and ack itself."""
    request = task.request
    tag = (request.delivery_info or {}).get("delivery_tag")
    backend = task.backend
    if (
        not isinstance(tag, str)
        or not isinstance(backend, StoreSuccessOnce)
        or request.called_directly
        or request.is_eager
        or not task.acks_late
        or task.ignore_result
        or request.ignore_result
        or request.chord
    ):
        return None
    keys = _unacked_keys(task.app)
    if keys is None:
        return None
    return Completion(backend, request, request.id, tag, *keys)


@cache
def _unacked_keys(app: Celery) -> tuple[str, str] | None:
    """kombu's unacked index and hash in the app's broker, or None for kombu's own channel
    (its own keys and ack). Read once: Celery's configuration look-ups are slow per job."""
    options = app.conf.broker_transport_options or {}
    if options.get("global_keyprefix") or not str(app.conf.broker_transport).startswith(
        "emailq.core.backends:"
    ):
        return None
    return options.get("unacked_index_key", "unacked_index"), options.get("unacked_key", "unacked")
