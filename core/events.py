"""Tracking events: what the tracking store learns about a job, as plain dicts.

A producer never opens the tracking database: it pushes its "queued" events onto a
Redis list, and workers (and the CLI) move them into the store. Events read back
from Redis are untrusted: ``parse`` checks their shape before anything writes them.
"""

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis

from emailq.core.keys import EVENTS, QUEUES

KINDS = ("queued", "requeued", "sending", "attempt", "retrying", "sent", "partial", "dead")
PRODUCER_KINDS = ("queued",)  # what may arrive through Redis


def event(kind: str, job_id: str, job: Mapping[str, Any] | None = None, **fields: Any) -> dict:
    """One event; ``job`` is a job's ``tracking_info()`` or its wire payload."""
    data: dict[str, Any] = {"kind": kind, "job_id": job_id, "at": time.time(), **fields}
    if job is not None:
        data.update(
            recipients=[*job.get("to", ()), *job.get("cc", ()), *job.get("bcc", ())],
            subject=job.get("subject", ""),
            priority=job.get("priority", "normal"),
            idempotency_key=job.get("idempotency_key"),
            batch_id=job.get("batch_id"),
        )
    return data


def push(client: redis.Redis | Any, events: Iterable[dict[str, Any]]) -> None:
    """Append events for the workers to store (``client`` may be a pipeline)."""
    encoded = [json.dumps(e, separators=(",", ":")) for e in events]
    if encoded:
        client.rpush(EVENTS, *encoded)


def pop(client: redis.Redis, count: int) -> list[bytes]:
    """Take up to ``count`` events, oldest first (LPOP with a count: Redis 6.2 or later)."""
    return client.lpop(EVENTS, count) or []


def parse(raw: bytes | str) -> dict[str, Any]:
    """An event from Redis with its shape checked; ``ValueError`` says what is wrong."""
    data = json.loads(raw)
    if not isinstance(data, dict) or data.get("kind") not in PRODUCER_KINDS:
        raise ValueError("not a producer's tracking event")
    job_id = data.get("job_id")
    if not isinstance(job_id, str) or not 0 < len(job_id) <= 64:
        raise ValueError("job_id must be a string of 1-64 characters")
    if not isinstance(data.get("at"), int | float):
        raise ValueError("at must be a number")
    recipients = data.get("recipients", [])
    if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
        raise ValueError("recipients must be a list of strings")
    if not isinstance(data.get("subject", ""), str) or data.get("priority", "normal") not in QUEUES:
        raise ValueError("subject must be a string and priority one of the queues")
    for name in ("idempotency_key", "batch_id"):
        if data.get(name) is not None and not isinstance(data[name], str):
            raise ValueError(f"{name} must be a string")
    return data
