"""The worker's Celery app: ``celery -A emailq.worker worker -Q high,normal``."""

from emailq.core.app import make_app

app = make_app()
