"""The Celery app: ``celery -A worker worker -Q high,normal``."""

from celery import Celery

app = Celery("emailq", include=["producer.tasks"])
app.config_from_object("worker.celeryconfig")
