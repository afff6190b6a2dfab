"""The Celery app: ``celery -A worker worker -Q high,normal``."""

from celery import Celery
from celery.signals import worker_init

from config import get_settings
from worker.errors import ConfigurationError

app = Celery("emailq", include=["producer.tasks", "worker.periodic"])
app.config_from_object("worker.celeryconfig")


@worker_init.connect
def _refuse_to_start_unable_to_send(**_: object) -> None:
    # Celery logs and swallows exceptions from signal handlers; SystemExit stops the worker.
    try:
        get_settings().sender  # noqa: B018 - raises when neither From variable is set
    except ConfigurationError as exc:
        raise SystemExit(f"worker not started: {exc}") from None


@app.on_after_configure.connect
def _schedule(sender: Celery, **_: object) -> None:
    from worker.periodic import beat_schedule

    sender.conf.beat_schedule = beat_schedule()
