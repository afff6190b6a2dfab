"""What applications import: ``from emailq import enqueue_email, enqueue_bulk, InvalidEmail``."""

from emailq.core.errors import InvalidEmail
from emailq.producer.bulk import BatchId, InvalidBatch, enqueue_bulk
from emailq.producer.tasks import enqueue_email

__all__ = ["BatchId", "InvalidBatch", "InvalidEmail", "enqueue_bulk", "enqueue_email"]
