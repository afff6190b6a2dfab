"""Outcome counters every worker adds to in Redis, for the metrics Flower serves.

One hash, ``COUNTERS``: a field per outcome (``sent``, ``partial``, ``retried``,
``deferred``) and per dead-letter reason (``dead:exhausted``...). A counter is a side
note: a Redis error loses the increment and never touches the job.
"""

import logging

import redis

from emailq.core.keys import COUNTERS

log = logging.getLogger(__name__)

OUTCOMES = ("sent", "partial", "retried", "deferred", "dead", "suppressed")


def count(client: redis.Redis, outcome: str, reason: str = "") -> None:
    """Add one to ``outcome`` (with ``reason`` for ``dead`` and ``deferred``)."""
    try:
        client.hincrby(COUNTERS, f"{outcome}:{reason}" if reason else outcome, 1)
    except redis.RedisError as exc:
        log.debug("outcome counter %s not counted: %s", outcome, exc)


def read(client: redis.Redis) -> dict[tuple[str, str], int]:
    """``{(outcome, reason): total}``, with every outcome present (0 until counted)."""
    totals = {(outcome, ""): 0 for outcome in OUTCOMES if outcome != "dead"}
    for field, value in client.hgetall(COUNTERS).items():
        outcome, _, reason = field.decode("utf-8", "replace").partition(":")
        if outcome not in OUTCOMES:
            continue  # written by someone else: not ours to export
        try:
            totals[(outcome, reason[:40])] = int(value)
        except ValueError:
            continue
    return totals
