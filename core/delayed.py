"""Parking delayed jobs: a countdown or ETA job waits in a Redis sorted set, not in a worker.

Celery keeps a countdown or ETA job unacknowledged in the worker's memory. With
Redis, once that wait passes the visibility timeout the job is handed to another
worker as well, and the email goes out twice (Celery's Redis caveats). A parked job
is an entry in ``emailq:delayed`` scored by its due time; every worker runs a mover
(``emailq.worker.mover``) that publishes due entries to their queue.
"""

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from emailq.core.keys import DELAYED, DELAYED_CLAIMED, QUEUES


def due_at(countdown: float | None, eta: datetime | str | None) -> float | None:
    """Celery's ``countdown``/``eta`` as epoch seconds, or None to publish now."""
    if eta is not None:
        return (datetime.fromisoformat(eta) if isinstance(eta, str) else eta).timestamp()
    if countdown:
        return time.time() + float(countdown)
    return None


def expires_at(expires: float | datetime | str | None) -> str | None:
    """Celery's ``expires`` as an absolute time, so a parked job keeps its deadline."""
    if expires is None:
        return None
    if isinstance(expires, int | float):  # seconds from now, as Celery counts them
        return (datetime.now(UTC) + timedelta(seconds=expires)).isoformat()
    return expires.isoformat() if isinstance(expires, datetime) else expires


def park(
    client: redis.Redis,
    *,
    task_id: str,
    kwargs: dict[str, Any],
    queue: str,
    due: float,
    retries: int = 0,
    expires: float | datetime | str | None = None,
    task: str = "emailq.send",
) -> None:
    """Hold a job until ``due`` (epoch seconds); the mover then publishes it as it is."""
    entry = {
        "task": task,
        "task_id": task_id,
        "kwargs": kwargs,
        "queue": queue,
        "retries": retries,
        "expires": expires_at(expires),
    }
    client.zadd(DELAYED, {json.dumps(entry, sort_keys=True): due})


def parse(raw: bytes | str) -> dict[str, Any]:
    """An entry read back from Redis, its shape checked; ``ValueError`` names what is wrong."""
    entry = json.loads(raw)
    if not isinstance(entry, dict):
        raise ValueError("a delayed entry must be a JSON object")
    if entry.get("task", "emailq.send") not in ("emailq.send", "emailq.send_many"):
        raise ValueError(f"unknown task {entry.get('task')!r}")
    if not isinstance(entry.get("task_id"), str) or not 0 < len(entry["task_id"]) <= 64:
        raise ValueError("task_id must be a string of 1-64 characters")
    if not isinstance(entry.get("kwargs"), dict):
        raise ValueError("kwargs must be an object")
    if entry.get("queue") not in QUEUES:
        raise ValueError(f"queue must be one of {list(QUEUES)}")
    retries = entry.get("retries", 0)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ValueError("retries must be a whole number, 0 or more")
    if entry.get("expires") is not None and not isinstance(entry["expires"], str):
        raise ValueError("expires must be an ISO 8601 time")
    return {"task": "emailq.send", "retries": 0, "expires": None, **entry}


def pending(client: redis.Redis) -> int:
    return client.zcard(DELAYED) + client.hlen(DELAYED_CLAIMED)
