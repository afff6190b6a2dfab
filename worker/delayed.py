"""Delayed jobs wait in a Redis sorted set, not inside a worker.

Celery keeps a countdown or ETA job unacknowledged in the worker's memory. With
Redis, once that wait passes the visibility timeout the job is handed to another
worker as well, and the email goes out twice (Celery's Redis caveats). A parked job
is an entry in ``emailq:delayed`` scored by its due time; every worker runs a mover
that publishes due entries to their queue.

Moving is claim-then-publish: a Lua script moves due entries into a claimed hash in
one step, so two movers never take the same entry, and an entry whose mover died
before publishing is put back after ``CLAIM_TIMEOUT_S``. The job ledger turns the
rare double publish from that window into a skipped duplicate, not a second email.
"""

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

log = logging.getLogger(__name__)

KEY = "emailq:delayed"
CLAIMED = "emailq:delayed:claimed"
CLAIM_TIMEOUT_S = 60.0  # far longer than one publish; shorter than anyone would wait for a job
BATCH = 500

_CLAIM = """
local items = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, item in ipairs(items) do
  redis.call('zrem', KEYS[1], item)
  redis.call('hset', KEYS[2], item, ARGV[1])
end
return items
"""

_UNCLAIM = """
if redis.call('hdel', KEYS[2], ARGV[1]) == 1 then
  redis.call('zadd', KEYS[1], ARGV[2], ARGV[1])
end
return 0
"""


def park(client: redis.Redis, entry: dict[str, Any], due: float) -> None:
    """Hold ``entry`` (task id, kwargs, publish options) until ``due`` (epoch seconds)."""
    client.zadd(KEY, {json.dumps(entry, sort_keys=True): due})


def pending(client: redis.Redis) -> int:
    return client.zcard(KEY) + client.hlen(CLAIMED)


class Mover:
    """Publishes due parked jobs; one per worker process, safe to run on every host."""

    def __init__(
        self,
        client: redis.Redis,
        publish: Callable[[dict[str, Any]], None],
        *,
        interval_s: float = 0.5,
    ) -> None:
        self.redis = client
        self.publish = publish
        self.interval_s = interval_s
        self._claim = client.register_script(_CLAIM)
        self._unclaim = client.register_script(_UNCLAIM)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def move_due(self, now: float | None = None) -> int:
        """Publish every entry due by ``now``; returns how many."""
        now = time.time() if now is None else now
        moved = 0
        while items := self._claim(keys=[KEY, CLAIMED], args=[now, BATCH]):
            for item in items:
                self.publish(json.loads(item))
                self.redis.hdel(CLAIMED, item)
                moved += 1
            if len(items) < BATCH:
                break
        return moved

    def recover(self, now: float | None = None) -> int:
        """Put back entries claimed by a mover that died before publishing them."""
        now = time.time() if now is None else now
        stale = [
            item
            for item, at in self.redis.hgetall(CLAIMED).items()
            if now - float(at) > CLAIM_TIMEOUT_S
        ]
        for item in stale:
            self._unclaim(keys=[KEY, CLAIMED], args=[item, now])
        return len(stale)

    def _run(self) -> None:
        last_recover = 0.0
        while not self._stop.wait(self.interval_s):
            try:
                if time.monotonic() - last_recover > CLAIM_TIMEOUT_S / 2:
                    self.recover()
                    last_recover = time.monotonic()
                self.move_due()
            except Exception:  # noqa: BLE001 - a dead mover would strand every delayed job
                log.exception("delayed-job mover failed; retrying in %ss", self.interval_s)

    def start(self) -> "Mover":
        self._thread = threading.Thread(target=self._run, name="emailq-delayed", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
