"""The backlog at a glance: how many jobs wait where, and for how long the oldest has.

``emailq queues`` prints it and Flower's ``/metrics`` exports it (``emailq.worker.metrics``).
Five places hold jobs: the two broker queues, the delayed set (retries and scheduled jobs),
the dead-letter queue, and ``unacked`` (taken by a worker, not yet acknowledged: in flight).

Ages come from what the jobs carry: ``queued_at``, stamped at the first publish (a retried
job keeps it), the dead-letter entry's ``dead_at``, and the time a worker took a job. Items
read here are untrusted: one that does not parse still counts in its place's depth, and
only its age is unknown.
"""

import base64
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from emailq.core.keys import DEAD_LETTER, DELAYED, DELAYED_CLAIMED, QUEUES

UNACKED, UNACKED_INDEX = "unacked", "unacked_index"  # kombu's Redis transport's keys
PRIORITY_SEP, PRIORITY_STEPS = "\x06\x16", (3, 6, 9)  # kombu's keys for prioritised messages


@dataclass(frozen=True)
class Place:
    name: str  # high, normal, delayed, dead_letter or in_flight
    depth: int
    oldest_age_s: float | None  # None when empty, or when the oldest item has no readable age
    note: str  # what the age measures

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def snapshot(client: redis.Redis, now: float | None = None) -> list[Place]:
    """Every place, in one round trip. Raises ``redis.RedisError`` if Redis is away."""
    now = time.time() if now is None else now
    pipe = client.pipeline(transaction=False)
    for queue in (*QUEUES, DEAD_LETTER):
        for key in (queue, *(f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS)):
            pipe.llen(key)
        pipe.lindex(queue, -1)  # the next to be taken: the oldest
    pipe.zcard(DELAYED).hlen(DELAYED_CLAIMED).zrange(DELAYED, 0, 0, withscores=True)
    pipe.hlen(UNACKED).zrange(UNACKED_INDEX, 0, 0, withscores=True)
    replies = iter(pipe.execute())

    places = []
    for queue in (*QUEUES, DEAD_LETTER):
        depth = sum(next(replies) for _ in range(1 + len(PRIORITY_STEPS)))
        oldest = next(replies)
        if queue == DEAD_LETTER:
            age = _age(now, _dead_at(oldest))
            note = "since the oldest entry was dead-lettered"
        else:
            age = _age(now, _queued_at(oldest))
            note = "since the oldest job was first queued"
        places.append(Place(queue, depth, age, note))
    delayed, claimed, first = next(replies), next(replies), next(replies)
    due = first[0][1] if first else None
    places.append(
        Place("delayed", delayed + claimed, _age(now, due), "past due of the job due first")
    )
    in_flight, taken = next(replies), next(replies)
    taken_at = taken[0][1] if taken else None
    places.append(
        Place("in_flight", in_flight, _age(now, taken_at), "since the longest-held was taken")
    )
    return places


def _age(now: float, since: float | None) -> float | None:
    return None if since is None else round(max(0.0, now - since), 3)


def _queued_at(item: bytes | None) -> float | None:
    """The job's first-publish time, from a kombu envelope holding a Celery message."""
    try:
        envelope = json.loads(item)  # type: ignore[arg-type]
        body = base64.b64decode(envelope["body"]) if _base64(envelope) else envelope["body"]
        kwargs = json.loads(body)[1]
        if "jobs" in kwargs:  # a bulk chunk: its oldest job
            return _epoch(min(j["job"]["queued_at"] for j in kwargs["jobs"]))
        return _epoch(kwargs["queued_at"])
    except (TypeError, ValueError, KeyError, IndexError, AttributeError):
        return None


def _dead_at(item: bytes | None) -> float | None:
    try:
        envelope = json.loads(item)  # type: ignore[arg-type]
        body = base64.b64decode(envelope["body"]) if _base64(envelope) else envelope["body"]
        return _epoch(json.loads(body)["dead_at"])
    except (TypeError, ValueError, KeyError, IndexError, AttributeError):
        return None


def _base64(envelope: dict) -> bool:
    return envelope.get("properties", {}).get("body_encoding") == "base64"


def _epoch(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 2**34:
        return float(value)
    return None
