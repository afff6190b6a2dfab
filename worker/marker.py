"""Noticing a Redis that came back empty: restarted without its data, or flushed.

The first worker to start writes a marker key that never expires. Every worker looks
for it every ``CHECK_S``; when it is gone, Redis lost everything it held (queued jobs,
parked retries, the ledger and the dead-letter queue), and operators must hear of it.
"""

import logging
import threading
import time

import redis

from emailq.core.keys import MARKER

log = logging.getLogger(__name__)

CHECK_S = 5.0


def plant(client: redis.Redis) -> str:
    """The marker's value, written now if no worker has written it before."""
    client.set(MARKER, f"{time.time():.0f}", nx=True)
    return (client.get(MARKER) or b"").decode()


class Watch:
    """Logs at CRITICAL, once per loss, when the marker disappears; then plants it again."""

    def __init__(self, client: redis.Redis, *, interval_s: float = CHECK_S) -> None:
        self.redis = client
        self.interval_s = interval_s
        self.losses = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """True if the marker was there; otherwise report the loss and plant it again."""
        if self.redis.exists(MARKER):
            return True
        self.losses += 1
        log.critical(
            "Redis lost its data (the %s marker is gone): it restarted without persistence or "
            "was flushed; jobs queued, parked or dead-lettered before then are gone, and the "
            "ledger no longer knows who already got a message", MARKER,
        )  # fmt: skip
        plant(self.redis)
        return False

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except redis.RedisError as exc:  # Redis away: it is checked again once it answers
                log.debug("marker not checked: %s", exc)

    def start(self) -> "Watch":
        plant(self.redis)
        self._thread = threading.Thread(target=self._run, name="emailq-marker", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
