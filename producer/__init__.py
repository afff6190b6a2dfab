"""What applications import: ``from emailq import enqueue_email, enqueue_bulk, InvalidEmail``."""

from emailq.core.errors import BrokerUnavailable, InvalidEmail, QueueFull
from emailq.producer.bulk import BatchId, InvalidBatch, enqueue_bulk
from emailq.producer.tasks import enqueue_email
from emailq.producer.transactions import enqueue_after_commit

__all__ = [
    "BatchId", "BrokerUnavailable", "InvalidBatch", "InvalidEmail", "QueueFull",
    "enqueue_after_commit", "enqueue_bulk", "enqueue_email",
]  # fmt: skip
