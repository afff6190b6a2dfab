"""Periodic jobs for ``celery -A worker beat``: system monitoring and the delivery report."""

import csv
import io
import logging
import socket
import time
from typing import Any

import psutil

from config import get_settings
from worker.celery import app

log = logging.getLogger(__name__)


def readings(disk_path: str) -> dict[str, float]:
    """CPU, memory and disk use, in percent."""
    return {
        "CPU": psutil.cpu_percent(interval=1),
        "Memory": psutil.virtual_memory().percent,
        "Disk": psutil.disk_usage(disk_path).percent,
    }


@app.task(name="emailq.check_system", ignore_result=True)
def check_system() -> list[str]:
    """Alert on every reading over its threshold (each cooled down fleet-wide)."""
    from producer.notifications import send_alert

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
            result = send_alert(
                f"{check} usage", host, f"{value:.0f}%", f"{thresholds[check]:.0f}%",
                to=settings.alert_to,
            )  # fmt: skip
            if result is not None:
                sent.append(result.id)
                log.warning("alert %s: %s usage %.0f%% on %s", result.id, check, value, host)
    return sent


def report_csv(stats: dict[str, int]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["status", "count"])
    writer.writerows(stats.items())
    return out.getvalue().encode()


@app.task(name="emailq.send_report", ignore_result=True)
def send_report() -> str | None:
    """The daily delivery report: an HTML table with the same figures attached as CSV."""
    from producer.tasks import enqueue_email
    from worker.recorder import default_store

    settings = get_settings()
    if not settings.report_to:
        return None
    stats = default_store().stats(days=1)
    day = time.strftime("%Y-%m-%d", time.gmtime())
    result = enqueue_email.delay(
        to=settings.report_to,
        template="report",
        context={"title": "Email delivery report", "period": f"24 hours to {day} UTC",
                 "columns": ["status", "count"], "rows": list(stats.items())},
        attachments=[{"filename": f"delivery-{day}.csv", "content": report_csv(stats),
                      "mimetype": "text/csv"}],
    )  # fmt: skip
    return result.id


def beat_schedule() -> dict[str, Any]:
    from celery.schedules import crontab

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
