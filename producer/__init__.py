"""What applications import: ``from producer import enqueue_email, InvalidEmail``."""

from producer.tasks import enqueue_email
from worker.errors import InvalidEmail

__all__ = ["InvalidEmail", "enqueue_email"]
