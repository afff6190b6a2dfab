"""Deferred, batched tracking writes: the sending path only appends to a queue.

A background thread writes whatever accumulated every ``FLUSH_INTERVAL_S`` in one
transaction, so tracking costs no database round trip per state change. A database
outage delays tracking, never email; the Redis ledger stays the record of who got
a message, and ``emailq status`` consults it too.

The same thread moves the producers' "queued" events from Redis (``emailq.core.events``)
into the store, so an application never opens the tracking database.
"""

import atexit
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from emailq.config import get_settings
from emailq.core import events
from emailq.core.store import redis_client
from emailq.worker.tracking import TrackingStore, engine_for, ensure_schema

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.5
BATCH = 2000
MAX_BACKLOG = 200_000  # events kept through a database outage before the oldest are dropped
# Beyond this backlog, a thread that emits writes a batch itself. Busy sender threads can
# starve the background writer of the GIL; sharing the work keeps memory flat.
HELP_AT = BATCH

Source = Callable[[int], list[bytes]]  # source(count): up to count raw events from Redis


class Recorder:
    def __init__(
        self, store_factory: Callable[[], Any] | None = None, *, source: Source | None = None
    ) -> None:
        self._store_factory = store_factory or default_store
        self._store: TrackingStore | None = None
        self._source = source
        self._events: deque[dict[str, Any]] = deque()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._healthy = True
        self.dropped = 0  # events given up over the recorder's life, the oldest first
        self._thread = threading.Thread(target=self._run, name="emailq-tracking", daemon=True)
        self._thread.start()
        self.pid = os.getpid()

    def emit(
        self, kind: str, job_id: str, job: dict[str, Any] | None = None, **fields: Any
    ) -> None:
        self._append([events.event(kind, job_id, job, **fields)])
        if len(self._events) > HELP_AT and self._healthy and self._lock.acquire(blocking=False):
            try:  # never while the database is down: a send must not wait for it
                self._write_batch()
            finally:
                self._lock.release()

    def _append(self, new: list[dict[str, Any]]) -> None:
        self._events.extend(new)
        self._trim()

    def _trim(self) -> None:
        """Past ``MAX_BACKLOG``, drop the oldest events: the newest say the most."""
        over = len(self._events) - MAX_BACKLOG
        if over <= 0:
            return
        for _ in range(over):
            self._events.popleft()
        before, self.dropped = self.dropped, self.dropped + over
        if before == 0 or before // BATCH != self.dropped // BATCH:  # log once per batch's worth
            log.warning(
                "tracking store unavailable: %d oldest events dropped so far (backlog %d)",
                self.dropped, MAX_BACKLOG,
            )  # fmt: skip

    def drain(self) -> int:
        """Move the producers' events from Redis into the store; returns how many.

        A batch at a time: each full batch is written before the next is read, so a long
        backlog in Redis (a large ``enqueue_bulk``, workers started after a fill) never
        sits in this process's memory at once. The last, partial batch stays queued for
        the next ``flush``. A write the database refuses stops the reading: the rest of
        the events wait in Redis.
        """
        if self._source is None:
            return 0
        moved = 0
        while raw := self._source(BATCH):
            parsed = []
            for item in raw:
                try:
                    parsed.append(events.parse(item))
                except ValueError as exc:  # json.JSONDecodeError is a ValueError too
                    log.warning("tracking event refused (%s): %.200r", exc, item)
            self._append(parsed)
            moved += len(raw)
            if len(raw) < BATCH or not self.flush():
                break
        return moved

    def flush(self) -> bool:
        """Write everything queued so far; False if the database refused."""
        with self._lock:
            while self._events:
                if not self._write_batch():
                    return False
        return True

    def _write_batch(self) -> bool:
        batch = [self._events.popleft() for _ in range(min(BATCH, len(self._events)))]
        try:
            if self._store is None:
                self._store = self._store_factory()
            self._store.apply(batch)
        except Exception as exc:  # noqa: BLE001 - any database failure: keep the events
            self._events.extendleft(reversed(batch))
            self._trim()
            if self._healthy:  # once per outage: the writer tries again every tick
                reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]  # no SQL dump
                log.warning(
                    "tracking store %s (%s); %d events kept in memory and written on the next "
                    "try (every %gs): nothing is lost (up to %d are kept), and sending goes on",
                    "busy" if "locked" in reason else "unavailable", reason, len(self._events),
                    FLUSH_INTERVAL_S, MAX_BACKLOG,
                )  # fmt: skip
            self._healthy = False
            return False
        if not self._healthy:  # the warning's closing line, at the same level so both show
            log.warning(
                "tracking store available again: writing the %d events kept",
                len(batch) + len(self._events),
            )
        self._healthy = True
        return True

    def _run(self) -> None:
        reading = True
        while not self._stopped.wait(FLUSH_INTERVAL_S):
            try:
                if self._healthy:  # while the database is down, producers' events wait in Redis
                    self.drain()
                    reading = True
            except Exception as exc:  # noqa: BLE001 - Redis down: try again next tick
                if reading:  # once per outage, not every tick
                    log.warning("tracking events could not be read from Redis: %s", exc)
                reading = False
            self.flush()

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        self.flush()


def default_store() -> TrackingStore:
    engine = engine_for(get_settings().tracking_url)
    ensure_schema(engine)
    return TrackingStore(engine)


def redis_source(count: int) -> list[bytes]:
    return events.pop(redis_client(), count)


_recorder: Recorder | None = None
_recorder_lock = threading.Lock()


def recorder() -> Recorder:
    """The process's recorder, created on first use (and again in a forked child)."""
    global _recorder
    with _recorder_lock:
        if _recorder is None or _recorder.pid != os.getpid():
            _recorder = Recorder(source=redis_source)
            atexit.register(_recorder.close)
        return _recorder
