"""Job locks kept alive while their sends run, and only while they run.

A job's lock lives ``LOCK_TTL_S``. A renewer thread in each worker process extends
every lock the process holds every ``LOCK_TTL_S / 3``, each only up to its deadline
(the longest one send may take), so a crashed worker's jobs are free again within
``LOCK_TTL_S``, and a wedged thread cannot hold a job for ever.
"""

import logging
import threading
import time

import redis

log = logging.getLogger(__name__)

LOCK_TTL_S = 15  # how long a dead worker's job stays locked: renewals come every 5 s

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""


class Renewer:
    """Extends the locks this process holds until each one's deadline."""

    def __init__(self, client: redis.Redis, *, ttl_s: float = LOCK_TTL_S) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self._renew = client.register_script(_RENEW)
        self._held: dict[str, tuple[str, float]] = {}  # lock key -> (token, deadline)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, key: str, token: str, *, for_s: float) -> None:
        with self._lock:
            self._held[key] = (token, time.monotonic() + for_s)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="emailq-locks", daemon=True)
                self._thread.start()

    def drop(self, key: str) -> None:
        with self._lock:
            self._held.pop(key, None)

    def held(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def renew(self) -> int:
        """Extend every held lock once; returns how many were extended."""
        now = time.monotonic()
        with self._lock:
            held = list(self._held.items())
        renewed = 0
        for key, (token, deadline) in held:
            if now >= deadline:  # the send overran its deadline: let the lock expire
                log.warning("lock %s held past its deadline; no longer renewed", key)
                self.drop(key)
                continue
            try:
                renewed += int(self._renew(keys=[key], args=[token, int(self.ttl_s * 1000)]))
            except redis.RedisError as exc:  # Redis is away: try again next round
                log.debug("lock %s not renewed: %s", key, exc)
        return renewed

    def _run(self) -> None:
        while True:
            time.sleep(self.ttl_s / 3)
            self.renew()
