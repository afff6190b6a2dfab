"""The worker's Celery app: ``celery -A emailq.worker worker -Q high,normal``."""

from emailq.core.app import make_app

app = make_app()
# Task events leave in timed batches, not one publish per loop turn (emailq.worker.consumer).
app.conf.worker_consumer = "emailq.worker.consumer:Consumer"
