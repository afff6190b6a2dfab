"""Building an alert: one high-priority email per check and host within a cooldown.

Both sides raise alerts: applications through ``emailq.producer.notifications`` and
the worker's periodic system check. Each publishes the job with its own app.
"""

from datetime import UTC, datetime

import redis

from emailq.config import Settings
from emailq.core.job import EmailJob
from emailq.core.keys import COOLDOWN
from emailq.core.validation import validate_job


def cooling_down(client: redis.Redis, check: str, host: str, cooldown_s: int) -> bool:
    """True if this check and host alerted within the cooldown; otherwise start one.

    One atomic Redis key shared by every worker and host, so two monitors seeing the
    same problem at the same moment send one email, not two.
    """
    return not client.set(f"{COOLDOWN}{check}:{host}", "1", nx=True, ex=cooldown_s)


def alert_job(
    check: str, host: str, value: str, threshold: str, *, to: list[str] | str,
    cooldown_s: int, severity: str, settings: Settings,
) -> EmailJob:  # fmt: skip
    """The alert email, rendered from the ``alert`` template and validated."""
    context = {
        "check": check, "host": host, "value": value, "threshold": threshold,
        "severity": severity, "cooldown_minutes": cooldown_s // 60,
        "detected_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }  # fmt: skip
    return validate_job(
        {"to": to, "template": "alert", "context": context, "priority": "high"}, settings
    )
