"""The layer both sides share: the job payload, errors, Redis keys, the Celery app, validation."""
