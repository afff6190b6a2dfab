"""tracemalloc snapshots from inside a worker process, for memory investigations.

Off unless ``EMAILQ_TRACEMALLOC_DIR`` names a directory; then ``install()`` (called as the
worker starts) starts ``tracemalloc`` with ``EMAILQ_TRACEMALLOC_FRAMES`` frames per
allocation (default 8) and a daemon thread that writes snapshots into that directory:

- every ``EMAILQ_TRACEMALLOC_INTERVAL_S`` seconds (default 60; 0 for on demand only), as
  ``<pid>-<n>.tracemalloc``;
- on demand: write a label into ``<dir>/request`` (``echo warm > <dir>/request``; replace
  the file rather than rewrite it in place, or an empty read gives a numbered snapshot too)
  and every traced process writes ``<pid>-<label>.tracemalloc`` within a second.

Each snapshot has a ``.json`` beside it: the process's RSS (and, on Linux, its split by
mapping: the brk heap, other anonymous memory, files), tracemalloc's traced total and
peak, glibc's ``mallinfo2`` (bytes in use and free in malloc's arenas), and the time: RSS
that grows while the traced total does not is the allocator's, or memory Python does not
allocate (SQLite's page cache...). Load a snapshot with ``tracemalloc.Snapshot.load(path)``.
Without the variable nothing is started and nothing is read again: no cost.
"""

import ctypes
import json
import logging
import os
import re
import sys
import threading
import time
import tracemalloc
from pathlib import Path

log = logging.getLogger(__name__)

ENV_DIR = "EMAILQ_TRACEMALLOC_DIR"
ENV_FRAMES = "EMAILQ_TRACEMALLOC_FRAMES"
ENV_INTERVAL = "EMAILQ_TRACEMALLOC_INTERVAL_S"
REQUEST = "request"  # the file a label is written to, for a snapshot on demand
POLL_S = 0.5  # how often the request file is looked at
_LABEL = re.compile(r"[^A-Za-z0-9_.-]")

_tracer: "Tracer | None" = None


class Tracer:
    """Writes this process's snapshots into ``directory`` (see the module's docstring)."""

    def __init__(self, directory: Path, *, interval_s: float) -> None:
        self.directory = directory
        self.interval_s = interval_s
        self.pid = os.getpid()
        self.written = 0
        self._seen = self._request_mtime()  # a request left from an earlier run is not one
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="emailq-memtrace", daemon=True)

    def start(self) -> "Tracer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def snapshot(self, label: str | None = None) -> Path:
        """Write one snapshot now; returns its path."""
        with self._lock:
            self.written += 1
            name = _LABEL.sub("_", label) if label else str(self.written)
            path = self.directory / f"{self.pid}-{name}.tracemalloc"
            started = time.time()
            traced, peak = tracemalloc.get_traced_memory()
            meta = {  # read before the snapshot, which takes memory of its own
                "pid": self.pid,
                "label": name,
                "at": started,
                "rss": _rss(),
                "rss_by_kind": _rss_by_kind(),
                "malloc": _mallinfo(),
                "pymalloc_blocks": sys.getallocatedblocks(),
                "traced": traced,
                "traced_peak": peak,
                "frames": tracemalloc.get_traceback_limit(),
            }
            partial = path.with_suffix(".tmp")
            tracemalloc.take_snapshot().dump(str(partial))
            os.replace(partial, path)  # a reader never sees half a snapshot
            meta["took_s"] = round(time.time() - started, 3)
            path.with_suffix(".json").write_text(json.dumps(meta))
            return path

    def _request_mtime(self) -> int | None:
        try:
            return (self.directory / REQUEST).stat().st_mtime_ns
        except OSError:
            return None

    def _run(self) -> None:
        due = time.monotonic() + self.interval_s if self.interval_s > 0 else None
        while not self._stop.wait(POLL_S):
            try:
                mtime = self._request_mtime()
                if mtime is not None and mtime != self._seen:
                    self._seen = mtime
                    label = (self.directory / REQUEST).read_text().strip() or None
                    self.snapshot(label)
                if due is not None and time.monotonic() >= due:
                    due = time.monotonic() + self.interval_s
                    self.snapshot()
            except Exception:  # noqa: BLE001 - a failed snapshot never touches the worker
                log.exception("tracemalloc snapshot failed")


def _rss() -> int:
    try:
        with open(f"/proc/{os.getpid()}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _rss_by_kind() -> dict[str, int]:
    """Resident bytes by mapping: "heap" (brk), "anon" (other anonymous), "file", "stack"."""
    kinds = {"heap": 0, "anon": 0, "file": 0, "stack": 0}
    kind = "anon"
    try:
        with open(f"/proc/{os.getpid()}/smaps") as smaps:
            for line in smaps:
                first = line.split(maxsplit=6)
                if "-" in first[0] and not first[0].endswith(":"):  # a mapping's header line
                    name = first[5].strip() if len(first) > 5 else ""
                    kind = (
                        "heap" if name == "[heap]"
                        else "stack" if name.startswith("[stack")
                        else "file" if name.startswith("/")
                        else "anon"
                    )  # fmt: skip
                elif first[0] == "Rss:":
                    kinds[kind] += int(first[1]) * 1024
    except (OSError, ValueError, IndexError):
        return {}
    return kinds


class _MallInfo2(ctypes.Structure):
    _fields_ = [  # noqa: RUF012 - ctypes' layout
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")
    ]  # fmt: skip


def _mallinfo() -> dict[str, int]:
    """glibc's malloc figures: arena (brk heap), hblkhd (mmapped), uordblks (in use), fordblks
    (free, kept); empty where glibc or mallinfo2 (glibc 2.33) is missing."""
    try:
        call = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return {}
    call.restype = _MallInfo2
    info = call()
    return {name: getattr(info, name) for name in ("arena", "hblkhd", "uordblks", "fordblks")}


def install() -> Tracer | None:
    """Start tracing if ``EMAILQ_TRACEMALLOC_DIR`` is set; a no-op otherwise."""
    global _tracer
    directory = os.environ.get(ENV_DIR)
    if not directory:
        return None
    if _tracer is not None and _tracer.pid == os.getpid():
        return _tracer
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    if not tracemalloc.is_tracing():
        tracemalloc.start(int(os.environ.get(ENV_FRAMES) or 8))
    _tracer = Tracer(path, interval_s=float(os.environ.get(ENV_INTERVAL) or 60)).start()
    log.warning(
        "tracemalloc on (%d frames): snapshots of pid %d in %s",
        tracemalloc.get_traceback_limit(), os.getpid(), path,
    )  # fmt: skip
    return _tracer
