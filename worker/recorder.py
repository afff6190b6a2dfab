"""Deferred, batched tracking writes: the sending path only appends to a queue.

A background thread writes whatever accumulated every ``FLUSH_INTERVAL_S`` in one
transaction, so tracking costs no database round trip per state change. A database
outage delays tracking, never email; the Redis ledger stays the record of who got
a message, and ``emailq status`` consults it too.
"""

import atexit
import logging
import os
import threading
import time
from collections import deque
from typing import Any

from config import get_settings
from worker.tracking import TrackingStore, engine_for, ensure_schema

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.5
BATCH = 2000
MAX_BACKLOG = 200_000  # events kept through a database outage before the oldest are dropped
# Beyond this backlog, a thread that emits writes a batch itself. Busy sender threads can
# starve the background writer of the GIL; sharing the work keeps memory flat.
HELP_AT = BATCH


class Recorder:
    def __init__(self, store_factory=None) -> None:
        self._store_factory = store_factory or default_store
        self._store: TrackingStore | None = None
        self._events: deque[dict[str, Any]] = deque(maxlen=MAX_BACKLOG)
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._healthy = True
        self._thread = threading.Thread(target=self._run, name="emailq-tracking", daemon=True)
        self._thread.start()
        self.pid = os.getpid()

    def emit(
        self, kind: str, job_id: str, job: dict[str, Any] | None = None, **fields: Any
    ) -> None:
        event = {"kind": kind, "job_id": job_id, "at": time.time(), **fields}
        if job is not None:
            event.update(
                recipients=_recipients(job), subject=job.get("subject", ""),
                priority=job.get("priority", "normal"),
                idempotency_key=job.get("idempotency_key"), batch_id=job.get("batch_id"),
            )  # fmt: skip
        self._events.append(event)
        if len(self._events) > HELP_AT and self._healthy and self._lock.acquire(blocking=False):
            try:  # never while the database is down: a send must not wait for it
                self._write_batch()
            finally:
                self._lock.release()

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
            log.warning("tracking store unavailable, %d events kept: %s", len(self._events), exc)
            self._healthy = False
            return False
        self._healthy = True
        return True

    def _run(self) -> None:
        while not self._stopped.wait(FLUSH_INTERVAL_S):
            self.flush()

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        self.flush()


def _recipients(job: dict[str, Any]) -> list[str]:
    return [*job.get("to", ()), *job.get("cc", ()), *job.get("bcc", ())]


def default_store() -> TrackingStore:
    engine = engine_for(get_settings().database_url)
    ensure_schema(engine)
    return TrackingStore(engine)


_recorder: Recorder | None = None
_recorder_lock = threading.Lock()


def recorder() -> Recorder:
    """The process's recorder, created on first use (and again in a forked child)."""
    global _recorder
    with _recorder_lock:
        if _recorder is None or _recorder.pid != os.getpid():
            _recorder = Recorder()
            atexit.register(_recorder.close)
        return _recorder
