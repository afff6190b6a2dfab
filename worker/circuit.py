"""A circuit breaker per SMTP account, shared by every worker through Redis.

After ``THRESHOLD`` connection failures in a row, workers stop sending through the
relay: the circuit opens for ``BASE_S``, doubling on every failed probe up to
``MAX_S``. When it has been open long enough, one worker probes with its next job;
success closes the circuit for everyone. Jobs held back meanwhile are deferred
without spending their retry budget (``MAX_JOB_AGE_S`` still bounds them).
"""

import logging
import threading
import time

import redis

from emailq.core.errors import CircuitOpen
from emailq.core.keys import CIRCUIT

log = logging.getLogger(__name__)

THRESHOLD = 5  # connection failures in a row before the circuit opens
WINDOW_S = 120  # failures further apart than this do not add up
BASE_S = 5.0  # first open period
MAX_S = 300.0  # longest open period: a relay back after an outage is found within this
PROBE_S = 60.0  # how long one probe may take before another worker probes instead
BUSY_PROBE_WAIT_S = 2.0  # while another worker probes, look again after this
CLOSED_CACHE_S = 1.0  # a closed circuit is read from Redis at most this often per process

# -> ms left open (> 0), 0: you probe, -1: closed, -2: another worker is probing
_ALLOW = """
local left = redis.call('pttl', KEYS[1])
if left > 0 then return left end
if tonumber(redis.call('get', KEYS[2]) or '0') >= tonumber(ARGV[1]) then
  if redis.call('set', KEYS[3], '1', 'NX', 'PX', ARGV[2]) then return 0 end
  return -2
end
return -1
"""

# -> ms the circuit was opened for (negative: opened again after a failed probe), or 0
_FAILED = """
local n = redis.call('incr', KEYS[2])
if n < tonumber(ARGV[1]) then
  redis.call('expire', KEYS[2], ARGV[4])
  return 0
end
redis.call('persist', KEYS[2])
if redis.call('pttl', KEYS[1]) > 0 then return 0 end
local before = tonumber(redis.call('get', KEYS[4]) or '0')
local open = math.max(before * 2, tonumber(ARGV[2]))
open = math.min(open, tonumber(ARGV[3]))
redis.call('set', KEYS[1], '1', 'PX', open)
redis.call('set', KEYS[4], open, 'EX', 3600)
redis.call('del', KEYS[3])
if before > 0 then return -open end
return open
"""


class Circuit:
    def __init__(self, client: redis.Redis, account: str) -> None:
        self.redis = client
        self.account = account
        base = f"{CIRCUIT}{account}"
        self._keys = [f"{base}:open", f"{base}:failures", f"{base}:probe", f"{base}:backoff"]
        self._allow = client.register_script(_ALLOW)
        self._failed = client.register_script(_FAILED)
        self._closed_until = 0.0
        self._troubled = False  # this process saw a failure or probed: a success must say so
        self._lock = threading.Lock()

    def check(self) -> None:
        """Return if a send may go through the relay now; raise ``CircuitOpen`` if not."""
        if time.monotonic() < self._closed_until:
            return
        state = self._allow(keys=self._keys[:3], args=[THRESHOLD, int(PROBE_S * 1000)])
        if state == -1:
            self._closed_until = time.monotonic() + CLOSED_CACHE_S
            return
        if state == 0:
            self._troubled = True
            log.warning("SMTP relay %s: probing whether it answers again", self.account)
            return
        wait = state / 1000 if state > 0 else BUSY_PROBE_WAIT_S
        raise CircuitOpen(wait, self.account)

    def failed(self) -> float:
        """Count a connection failure; returns how long the circuit stays open (0: closed)."""
        self._troubled = True
        self._closed_until = 0.0
        opened = self._failed(keys=self._keys, args=[THRESHOLD, int(BASE_S * 1000),
                                                      int(MAX_S * 1000), WINDOW_S])  # fmt: skip
        if opened > 0:  # once per outage: later probes that fail only warn
            log.critical(
                "SMTP relay %s unreachable after %d connection failures in a row; holding "
                "every job back for %.0fs, then probing", self.account, THRESHOLD, opened / 1000,
            )  # fmt: skip
        elif opened < 0:
            log.warning("SMTP relay %s still unreachable; next probe in %.0fs", self.account,
                        -opened / 1000)  # fmt: skip
        return abs(opened) / 1000

    def succeeded(self) -> None:
        """The relay took a message: close the circuit if this process saw it in trouble."""
        if not self._troubled:
            return
        with self._lock:
            self._troubled = False
        if self.redis.delete(*self._keys):
            log.warning("SMTP relay %s answers again; circuit closed", self.account)

    def state(self) -> dict[str, float | int | str]:
        """For ``emailq check``: closed, open (and for how long) or probing."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.pttl(self._keys[0])
        pipe.get(self._keys[1])
        pipe.exists(self._keys[2])
        left, failures, probing = pipe.execute()
        failures = int(failures or 0)
        if left > 0:
            return {"state": "open", "seconds_left": left / 1000, "failures": failures}
        if failures >= THRESHOLD:
            return {"state": "probing" if probing else "half-open", "failures": failures}
        return {"state": "closed", "failures": failures}


def account(settings) -> str:  # noqa: ANN001 - emailq.config.Settings
    """The relay and login a circuit (and a rate limit) belongs to."""
    return f"{settings.smtp_server}:{settings.smtp_port}:{settings.login or 'anonymous'}"
