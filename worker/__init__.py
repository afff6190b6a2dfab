"""The worker side: the Celery app (`worker.celery`), message building, the SMTP sender."""
