"""Periodic jobs for ``celery -A emailq.worker beat``: system monitoring and the delivery report.

They create new jobs on the worker side: validated here, then published with the
worker's own task, which is how an application's jobs arrive too.
"""

import csv
import io
import logging
import socket
import time
from typing import Any

import psutil
from celery import Celery
from celery.schedules import crontab

from emailq.config import Settings, get_settings
from emailq.core.alerts import alert_job, cooling_down
from emailq.core.job import EmailJob, stamped
from emailq.core.store import redis_client
from emailq.core.validation import validate_job
from emailq.worker.app import app
from emailq.worker.recorder import default_store, recorder
from emailq.worker.tasks import send

log = logging.getLogger(__name__)


def readings(disk_path: str) -> dict[str, float]:
    """CPU, memory and disk use, in percent."""
    return {
        "CPU": psutil.cpu_percent(interval=1),
        "Memory": psutil.virtual_memory().percent,
        "Disk": psutil.disk_usage(disk_path).percent,
    }


@app.task(name="emailq.check_system", ignore_result=True, shared=False)
def check_system() -> list[str]:
    """Alert on every reading over its threshold (each cooled down fleet-wide)."""
    settings = get_settings()
    if not settings.alert_to:
        return []
    thresholds = {
        "CPU": settings.alert_cpu_percent,
        "Memory": settings.alert_memory_percent,
        "Disk": settings.alert_disk_percent,
    }
    host, sent = socket.gethostname(), []
    for check, value in readings(settings.alert_disk_path).items():
        if value >= thresholds[check]:
            name = f"{check} usage"
            if cooling_down(redis_client(), name, host, settings.alert_cooldown_s):
                continue
            job = alert_job(
                name, host, f"{value:.0f}%", f"{thresholds[check]:.0f}%", to=settings.alert_to,
                cooldown_s=settings.alert_cooldown_s, severity="critical", settings=settings,
            )  # fmt: skip
            job_id = publish(job)
            sent.append(job_id)
            log.warning("alert %s: %s usage %.0f%% on %s", job_id, check, value, host)
    return sent


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


def beat_schedule() -> dict[str, Any]:
    settings = get_settings()
    return {
        "check-system": {
            "task": "emailq.check_system",
            "schedule": settings.alert_check_interval_s,
        },
        "daily-report": {
            "task": "emailq.send_report",
            "schedule": crontab(minute=0, hour=settings.report_hour),
        },
    }


@app.on_after_configure.connect
def _schedule(sender: Celery, **_: object) -> None:
    sender.conf.beat_schedule = beat_schedule()


if app.configured:  # configured before this module loaded: the signal has already gone
    app.conf.beat_schedule = beat_schedule()
