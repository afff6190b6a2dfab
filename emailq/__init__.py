"""Email notifications on Celery and Redis.

Applications write ``from emailq import enqueue_email, enqueue_bulk, InvalidEmail``; a Redis
that cannot take jobs raises ``BrokerUnavailable`` (``QueueFull`` when it is nearly full).
Workers run ``celery -A emailq.worker worker -Q high,normal``.

The producer loads on first use, so ``import emailq.worker`` in a worker process
never loads the producer, and ``import emailq`` alone loads nothing but the errors.
"""

from typing import TYPE_CHECKING, Any

from emailq.core.errors import (
    BrokerUnavailable,
    ConfigurationError,
    EmailQError,
    InvalidEmail,
    QueueFull,
)

if TYPE_CHECKING:
    from emailq.producer import (
        BatchId,
        InvalidBatch,
        enqueue_after_commit,
        enqueue_bulk,
        enqueue_email,
    )

__all__ = [
    "BatchId", "BrokerUnavailable", "ConfigurationError", "EmailQError", "InvalidBatch",
    "InvalidEmail", "QueueFull", "enqueue_after_commit", "enqueue_bulk", "enqueue_email",
]  # fmt: skip
_PRODUCER = frozenset(
    {"BatchId", "InvalidBatch", "enqueue_after_commit", "enqueue_bulk", "enqueue_email"}
)


def __getattr__(name: str) -> Any:
    if name in _PRODUCER:
        import emailq.producer

        return getattr(emailq.producer, name)
    raise AttributeError(f"module 'emailq' has no attribute {name!r}")
