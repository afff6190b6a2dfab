"""The delayed-job mover: publishes parked jobs (``emailq.core.delayed``) once they are due.

Moving is claim-then-publish: a Lua script moves due entries into a claimed hash in
one step, so two movers never take the same entry, and an entry whose mover died
before publishing is put back after ``CLAIM_TIMEOUT_S``. The job ledger turns the
rare double publish from that window into a skipped duplicate, not a second email.

Entries come out of Redis, so they are untrusted: each is parsed and published on its
own, and one that cannot be is handed to ``reject`` (the dead-letter queue) without
holding up the others. Only an outage of Redis or the broker stops a move.
"""

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from emailq.core import delayed
from emailq.core.keys import DELAYED, DELAYED_CLAIMED
from emailq.worker.retry import INFRASTRUCTURE

log = logging.getLogger(__name__)

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


class Mover:
    """Publishes due parked jobs; one per worker process, safe to run on every host."""

    def __init__(
        self,
        client: redis.Redis,
        publish: Callable[[dict[str, Any]], None],
        *,
        reject: Callable[[bytes, Exception], None] | None = None,
        interval_s: float = 0.5,
    ) -> None:
        self.redis = client
        self.publish = publish
        self.reject = reject
        self.interval_s = interval_s
        self._claim = client.register_script(_CLAIM)
        self._unclaim = client.register_script(_UNCLAIM)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def move_due(self, now: float | None = None) -> int:
        """Publish every entry due by ``now``; returns how many."""
        now = time.time() if now is None else now
        moved = 0
        while items := self._claim(keys=[DELAYED, DELAYED_CLAIMED], args=[now, BATCH]):
            for item in items:
                try:
                    self.publish(delayed.parse(item))
                    moved += 1
                except INFRASTRUCTURE:
                    raise  # the broker is down: this and the rest stay claimed, recovered later
                except Exception as exc:  # noqa: BLE001 - this entry alone; the others go on
                    log.error("delayed entry refused (%s): %.200r", exc, item)
                    if self.reject is not None:
                        self.reject(item, exc)
                self.redis.hdel(DELAYED_CLAIMED, item)
            if len(items) < BATCH:
                break
        return moved

    def recover(self, now: float | None = None) -> int:
        """Put back entries claimed by a mover that died before publishing them."""
        now = time.time() if now is None else now
        stale = [
            item
            for item, at in self.redis.hgetall(DELAYED_CLAIMED).items()
            if now - float(at) > CLAIM_TIMEOUT_S
        ]
        for item in stale:
            self._unclaim(keys=[DELAYED, DELAYED_CLAIMED], args=[item, now])
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
