"""What applications import: ``from producer import enqueue_email, enqueue_bulk, InvalidEmail``."""

from producer.bulk import BatchId, InvalidBatch, enqueue_bulk
from producer.tasks import enqueue_email
from worker.errors import InvalidEmail

__all__ = ["BatchId", "InvalidBatch", "InvalidEmail", "enqueue_bulk", "enqueue_email"]
