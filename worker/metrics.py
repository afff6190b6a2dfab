"""Prometheus figures for the backlog, the outcomes and the relay, served by Flower's /metrics.

Flower's process has no jobs of its own, so the collector reads, at each scrape, what every
worker left in Redis: the places jobs wait (``emailq.worker.queues``), the outcome counters
(``emailq.worker.counters``) and the relay's circuit breaker. A Redis that does not answer
gives ``emailq_redis_up 0`` and nothing else, rather than a failed scrape.
"""

import logging
from collections.abc import Iterator
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from emailq.config import Settings
from emailq.core.store import connect
from emailq.worker import counters
from emailq.worker.circuit import Circuit, account
from emailq.worker.queues import snapshot

log = logging.getLogger(__name__)

CIRCUIT_STATES = ("closed", "half-open", "probing", "open")


class Collector:
    """A ``prometheus_client`` collector; register it once, in the process serving /metrics."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.redis = client if client is not None else connect(settings)

    def describe(self) -> list[Metric]:
        return []  # figures appear as Redis holds them: no fixed list to check at register

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("emailq_redis_up", "1 if Redis answered this scrape")
        try:
            figures = list(self._figures())
        except redis.RedisError as exc:
            log.warning("metrics: Redis did not answer (%s)", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from figures

    def _figures(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "emailq_queue_depth", "Jobs waiting in each place", labels=["queue"]
        )
        age = GaugeMetricFamily(
            "emailq_queue_oldest_age_seconds",
            "Age of the oldest job in each place (see `emailq queues` for what it measures)",
            labels=["queue"],
        )
        for place in snapshot(self.redis):
            depth.add_metric([place.name], place.depth)
            if place.oldest_age_s is not None:
                age.add_metric([place.name], place.oldest_age_s)
        yield depth
        yield age

        jobs = CounterMetricFamily(
            "emailq_jobs",
            "Job outcomes since Redis last lost its data",
            labels=["outcome", "reason"],
        )
        for (outcome, reason), value in sorted(counters.read(self.redis).items()):
            jobs.add_metric([outcome, reason], value)
        yield jobs

        relay = f"{self.settings.smtp_server}:{self.settings.smtp_port}"
        state: dict[str, Any] = Circuit(self.redis, account(self.settings)).state()
        circuit = GaugeMetricFamily(
            "emailq_relay_circuit_state",
            "1 for the relay circuit's current state (open: workers hold jobs back)",
            labels=["relay", "state"],
        )
        for name in CIRCUIT_STATES:
            circuit.add_metric([relay, name], 1 if state["state"] == name else 0)
        yield circuit
        failures = GaugeMetricFamily(
            "emailq_relay_connection_failures", "Recent connection failures", labels=["relay"]
        )
        failures.add_metric([relay], float(state["failures"]))
        yield failures
