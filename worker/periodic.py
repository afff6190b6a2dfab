"""Periodic jobs for ``celery -A emailq.worker beat``: the delivery report, retention.

The report creates a new job on the worker side: validated here, then published with the
worker's own task, which is how an application's jobs arrive too. Host monitoring is not
a beat job: each host's workers watch that host (``emailq.worker.monitor``).
"""

import csv
import io
import logging
import time
from pathlib import Path
from typing import Any

from celery import Celery
from celery.beat import PersistentScheduler
from celery.schedules import crontab

from emailq.config import Settings, get_settings
from emailq.core.job import EmailJob, stamped
from emailq.core.validation import validate_job
from emailq.worker.app import app
from emailq.worker.recorder import default_store, recorder
from emailq.worker.retention import prune
from emailq.worker.tasks import send

log = logging.getLogger(__name__)


def publish(job: EmailJob) -> str:
    """Queue a job created here; returns its id."""
    result = send.apply_async(kwargs=stamped(job).to_dict(), queue=job.priority)
    recorder().emit("queued", result.id, job.tracking_info())
    return result.id


def report_csv(stats: dict[str, int]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["status", "count"])
    writer.writerows(stats.items())
    return out.getvalue().encode()


@app.task(name="emailq.send_report", ignore_result=True, shared=False)
def send_report() -> str | None:
    """The daily delivery report: an HTML table with the same figures attached as CSV."""
    settings = get_settings()
    if not settings.report_to:
        return None
    stats = default_store().stats(days=1)
    return publish(report_job(stats, settings))


def report_job(stats: dict[str, int], settings: Settings) -> EmailJob:
    day = time.strftime("%Y-%m-%d", time.gmtime())
    kwargs = dict(
        to=settings.report_to,
        template="report",
        context={"title": "Email delivery report", "period": f"24 hours to {day} UTC",
                 "columns": ["status", "count"], "rows": list(stats.items())},
        attachments=[{"filename": f"delivery-{day}.csv", "content": report_csv(stats),
                      "mimetype": "text/csv"}],
    )  # fmt: skip
    return validate_job(kwargs, settings)


@app.task(name="emailq.prune_tracking", ignore_result=True, shared=False)
def prune_tracking() -> int:
    """Delete tracking rows older than TRACKING_RETENTION_DAYS (0 keeps them for ever)."""
    days = get_settings().tracking_retention_days
    if not days:
        return 0
    engine = default_store().engine
    try:
        pruned = prune(engine, days=days)
    finally:
        engine.dispose()  # once a day: no pool to keep open in the worker
    log.info("tracking retention: %d jobs unchanged for %d days deleted", pruned, days)
    return pruned


class Scheduler(PersistentScheduler):
    """Celery's scheduler, creating ``EMAILQ_DATA_DIR`` (where its file lives) on first run."""

    def setup_schedule(self) -> None:
        Path(self.schedule_filename).parent.mkdir(parents=True, exist_ok=True)
        super().setup_schedule()


def beat_schedule() -> dict[str, Any]:
    settings = get_settings()
    return {
        "daily-report": {
            "task": "emailq.send_report",
            "schedule": crontab(minute=0, hour=settings.report_hour),
        },
        # Daily, off the hour so it never meets the report (REPORT_HOUR:00).
        "prune-tracking": {
            "task": "emailq.prune_tracking",
            "schedule": crontab(minute=30, hour=3),
        },
    }


@app.on_after_configure.connect
def _schedule(sender: Celery, **_: object) -> None:
    sender.conf.beat_schedule = beat_schedule()


if app.configured:  # configured before this module loaded: the signal has already gone
    app.conf.beat_schedule = beat_schedule()
