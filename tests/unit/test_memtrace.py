"""tracemalloc snapshots from a worker: off by default, written on demand when enabled."""

import json
import threading
import time
import tracemalloc

import pytest

from emailq.worker import memtrace


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(memtrace, "_tracer", None)
    monkeypatch.setattr(memtrace, "POLL_S", 0.05)
    was_tracing = tracemalloc.is_tracing()
    yield
    if memtrace._tracer is not None:
        memtrace._tracer.stop()
    if not was_tracing:
        tracemalloc.stop()


def test_off_without_the_variable(fresh, monkeypatch):
    monkeypatch.delenv(memtrace.ENV_DIR, raising=False)
    was_tracing = tracemalloc.is_tracing()

    assert memtrace.install() is None
    assert tracemalloc.is_tracing() == was_tracing
    assert not any(t.name == "emailq-memtrace" for t in threading.enumerate())


def test_with_the_variable_a_request_writes_a_snapshot(fresh, monkeypatch, tmp_path):
    monkeypatch.setenv(memtrace.ENV_DIR, str(tmp_path))
    monkeypatch.setenv(memtrace.ENV_FRAMES, "4")
    monkeypatch.setenv(memtrace.ENV_INTERVAL, "0")  # on demand only

    tracer = memtrace.install()
    assert tracer is not None and tracemalloc.is_tracing()
    assert memtrace.install() is tracer  # once per process
    kept = [bytearray(1000) for _ in range(100)]  # something to find in the snapshot

    (tmp_path / memtrace.REQUEST).write_text("warm\n")
    path = tmp_path / f"{tracer.pid}-warm.tracemalloc"
    deadline = time.monotonic() + 10
    while not path.with_suffix(".json").exists() and time.monotonic() < deadline:
        time.sleep(0.02)

    snapshot = tracemalloc.Snapshot.load(str(path))
    assert snapshot.traceback_limit == 4
    assert any(stat.traceback[0].filename == __file__ for stat in snapshot.statistics("lineno"))
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["label"] == "warm" and meta["pid"] == tracer.pid
    assert meta["rss"] > 0 and meta["traced"] > 0
    assert set(meta["rss_by_kind"]) == {"heap", "anon", "file", "stack"}
    assert meta["malloc"]["uordblks"] > 0
    assert len(kept) == 100
