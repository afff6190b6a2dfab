"""The worker side: ``celery -A emailq.worker worker -Q high,normal``.

Loads the app with its tasks, periodic jobs and start/stop handlers. The worker
imports nothing from the producer; both build on ``emailq.core``.
"""

from emailq.worker import flower, lifecycle, periodic, tasks
from emailq.worker.app import app

flower.install()  # `celery -A emailq.worker flower` requires authentication from any directory

__all__ = ["app", "lifecycle", "periodic", "tasks"]
