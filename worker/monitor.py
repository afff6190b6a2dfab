"""Each host watches itself: CPU, memory and disk, against its own thresholds.

Every worker process runs a ``Monitor`` thread, and the processes of one host elect one of
them through a per-host Redis lock (``MONITOR`` + host name), renewed while its holder
lives and taken over by another process within ``ttl`` of the holder's death. The elected
process reads this host's figures every ``ALERT_CHECK_INTERVAL_S`` with this host's
``ALERT_*_PERCENT`` settings, and queues an alert on ``high`` for each figure over its
threshold (one per check and host per ``ALERT_COOLDOWN_S``, fleet-wide).

A beat job could not do this: it runs on whichever worker takes it from the queue, with
that worker's thresholds, behind any bulk backlog.
"""

import contextlib
import logging
import socket
import threading
from collections.abc import Callable

import psutil
import redis

from emailq.config import Settings
from emailq.core.alerts import alert_job, cooling_down
from emailq.core.job import EmailJob
from emailq.core.keys import MONITOR

log = logging.getLogger(__name__)

_HOLD = """
local holder = redis.call('get', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def readings(disk_path: str) -> dict[str, float]:
    """CPU, memory and disk use on this host, in percent (CPU over one second)."""
    return {
        "CPU": psutil.cpu_percent(interval=1),
        "Memory": psutil.virtual_memory().percent,
        "Disk": psutil.disk_usage(disk_path).percent,
    }


class Monitor:
    """One per worker process; only the host's elected process takes readings."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        publish: Callable[[EmailJob], str],
        *,
        host: str | None = None,
        read: Callable[[str], dict[str, float]] = readings,
        ident: str | None = None,
    ) -> None:
        self.redis = client
        self.settings = settings
        self.publish = publish
        self.host = host or socket.gethostname()
        self.read = read
        self.ident = ident or f"{socket.gethostname()}:{threading.get_native_id()}:{id(self)}"
        self.interval_s = settings.alert_check_interval_s
        self._hold = client.register_script(_HOLD)
        self._release = client.register_script(_RELEASE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def elected(self) -> bool:
        """Take or keep this host's monitor lock; True while this process holds it."""
        ttl_ms = int(max(3 * self.interval_s, 10) * 1000)
        return bool(self._hold(keys=[MONITOR + self.host], args=[self.ident, ttl_ms]))

    def check(self) -> list[str]:
        """One round: the ids of the alerts queued (none unless elected and over a threshold)."""
        s = self.settings
        if not s.alert_to or not self.elected():
            return []
        thresholds = {
            "CPU": s.alert_cpu_percent,
            "Memory": s.alert_memory_percent,
            "Disk": s.alert_disk_percent,
        }
        sent = []
        for check, value in self.read(s.alert_disk_path).items():
            if value < thresholds[check]:
                continue
            name = f"{check} usage"
            if cooling_down(self.redis, name, self.host, s.alert_cooldown_s):
                continue
            job = alert_job(
                name, self.host, f"{value:.0f}%", f"{thresholds[check]:.0f}%", to=s.alert_to,
                cooldown_s=s.alert_cooldown_s, severity="critical", settings=s,
            )  # fmt: skip
            job_id = self.publish(job)
            sent.append(job_id)
            log.warning(
                "alert %s: %s usage %.0f%% on %s (threshold %.0f%%)",
                job_id, check, value, self.host, thresholds[check],
            )  # fmt: skip
        return sent

    def start(self) -> "Monitor":
        self._thread = threading.Thread(target=self._run, name="emailq-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop, and hand the host's lock on at once rather than after its TTL."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(redis.RedisError):  # else the lock expires by itself
            self._release(keys=[MONITOR + self.host], args=[self.ident])

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - a failed round must not end the monitoring
                log.exception("host monitor round failed; next in %ss", self.interval_s)
