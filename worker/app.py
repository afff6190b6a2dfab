"""The worker's Celery app: ``celery -A emailq.worker worker -Q high,normal``."""

from emailq.core.app import make_app
from emailq.worker import resultrepr

app = make_app()
# Task events leave in timed batches, not one publish per loop turn (emailq.worker.consumer).
app.conf.worker_consumer = "emailq.worker.consumer:Consumer"
# Results are rendered for events and logs with the built-in repr where they are plain data.
resultrepr.install()
