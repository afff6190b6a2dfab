"""Tracking writes keep up with busy senders, and never make a send wait for a down database."""

import threading

from emailq.worker import recorder as recorder_module
from emailq.worker.recorder import HELP_AT, Recorder
from emailq.worker.tracking import _without_superseded


class Store:
    def __init__(self, *, down: bool = False) -> None:
        self.down = down
        self.batches: list[list[dict]] = []
        self.threads: set[str] = set()

    def apply(self, batch: list[dict]) -> None:
        if self.down:
            raise ConnectionError("database down")
        self.batches.append(batch)
        self.threads.add(threading.current_thread().name)


def test_an_emitting_thread_writes_a_batch_itself_once_the_backlog_is_long(monkeypatch):
    monkeypatch.setattr(recorder_module, "FLUSH_INTERVAL_S", 3600)  # the writer never wakes
    store = Store()
    rec = Recorder(store_factory=lambda: store)

    for i in range(HELP_AT + 1):
        rec.emit("sent", f"job-{i}", attempts=1)

    assert sum(len(b) for b in store.batches) == recorder_module.BATCH
    assert store.threads == {threading.current_thread().name}


def test_a_down_database_is_not_retried_on_the_sending_path(monkeypatch):
    monkeypatch.setattr(recorder_module, "FLUSH_INTERVAL_S", 3600)
    store = Store(down=True)
    rec = Recorder(store_factory=lambda: store)
    assert rec.flush() is True  # nothing queued yet
    rec.emit("sent", "job-0")
    assert rec.flush() is False  # the database refused: the events stay

    calls = []
    store.apply = lambda batch: calls.append(batch)  # type: ignore[method-assign]
    for i in range(HELP_AT + 10):
        rec.emit("sent", f"job-{i}")

    assert calls == []  # senders did not try the database again; the writer will
    assert rec.flush() is True
    assert sum(len(b) for b in calls) == HELP_AT + 11


def test_a_sending_event_settled_later_in_the_same_batch_is_not_written():
    events = [
        {"kind": "sending", "job_id": "a"}, {"kind": "attempt", "job_id": "a"},
        {"kind": "sent", "job_id": "a"}, {"kind": "retrying", "job_id": "b"},
        {"kind": "sending", "job_id": "b"}, {"kind": "sending", "job_id": "c"},
    ]  # fmt: skip

    kept = [(e["kind"], e["job_id"]) for e in _without_superseded(events)]

    assert kept == [("attempt", "a"), ("sent", "a"), ("retrying", "b"), ("sending", "b"),
                    ("sending", "c")]  # fmt: skip


def test_a_full_backlog_drops_the_oldest_events_counts_them_and_says_so(monkeypatch, caplog):
    # Given a database that is down and room for five events
    monkeypatch.setattr(recorder_module, "FLUSH_INTERVAL_S", 3600)
    monkeypatch.setattr(recorder_module, "MAX_BACKLOG", 5)
    store = Store(down=True)
    rec = Recorder(store_factory=lambda: store)

    # When eight events arrive, and a write fails and puts its batch back
    for i in range(8):
        rec.emit("sent", f"job-{i}")
    assert rec.flush() is False

    # Then the three oldest were given up, the newest kept, and the drop logged
    store.down = False
    assert rec.flush() is True
    assert [e["job_id"] for b in store.batches for e in b] == [f"job-{i}" for i in range(3, 8)]
    assert rec.dropped == 3
    assert "oldest events dropped" in caplog.text


def test_producer_events_from_redis_are_checked_before_they_are_stored(monkeypatch):
    import json

    monkeypatch.setattr(recorder_module, "FLUSH_INTERVAL_S", 3600)
    good = {"kind": "queued", "job_id": "j1", "at": 1.0, "recipients": ["a@x.org"]}
    raw = [
        json.dumps(good).encode(),
        b"not json",
        json.dumps({**good, "kind": "sent"}).encode(),  # only "queued" may come from producers
        json.dumps({**good, "recipients": "a@x.org"}).encode(),
        json.dumps({**good, "job_id": "x" * 65}).encode(),
    ]
    batches = [raw]
    store = Store()
    rec = Recorder(store_factory=lambda: store, source=lambda n: batches.pop() if batches else [])

    assert rec.drain() == 5
    assert rec.flush() is True

    assert [e["job_id"] for b in store.batches for e in b] == ["j1"]


def test_an_outage_is_logged_once_as_harmless_and_its_end_once(monkeypatch, caplog):
    # Given a database that is locked for three write attempts
    monkeypatch.setattr(recorder_module, "FLUSH_INTERVAL_S", 3600)
    store = Store(down=True)
    rec = Recorder(store_factory=lambda: store)
    rec.emit("sent", "job-0")

    with caplog.at_level("INFO", logger=recorder_module.__name__):
        for _ in range(3):
            assert rec.flush() is False
        # When it answers again
        store.down = False
        assert rec.flush() is True
        assert rec.flush() is True

    # Then one warning says the events are kept and nothing is lost, and one line says it ended
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [
        ("WARNING", "tracking store unavailable (database down); 1 events kept in memory and "
                    "written on the next try (every 3600s): nothing is lost (up to 200000 are "
                    "kept), and sending goes on"),
        ("WARNING", "tracking store available again: writing the 1 events kept"),
    ]  # fmt: skip


def test_a_locked_sqlite_database_is_called_busy_without_the_sql(monkeypatch, caplog):
    import sqlite3

    from sqlalchemy.exc import OperationalError

    monkeypatch.setattr(recorder_module, "FLUSH_INTERVAL_S", 3600)
    locked = OperationalError(
        "INSERT INTO jobs ...", {}, sqlite3.OperationalError("database is locked")
    )

    class Locked(Store):
        def apply(self, batch: list[dict]) -> None:
            raise locked

    store = Locked()
    rec = Recorder(store_factory=lambda: store)
    rec.emit("sent", "job-0")

    assert rec.flush() is False

    [record] = caplog.records
    assert record.getMessage().startswith("tracking store busy (database is locked); 1 events kept")
    assert "INSERT" not in record.getMessage()


def test_a_long_backlog_in_redis_is_written_a_batch_at_a_time(monkeypatch):
    # Given three full batches and a few more of the producers' events waiting in Redis
    import json

    monkeypatch.setattr(recorder_module, "FLUSH_INTERVAL_S", 3600)
    size = recorder_module.BATCH
    left = [
        json.dumps({"kind": "queued", "job_id": f"j{i}", "at": 1.0}).encode()
        for i in range(3 * size + 7)
    ]
    store = Store()
    held: list[int] = []  # events in memory each time the next batch is read

    def source(count: int) -> list[bytes]:
        held.append(len(rec._events))
        taken = left[:count]
        del left[:count]
        return taken

    rec = Recorder(store_factory=lambda: store, source=source)

    # When they are drained
    assert rec.drain() == 3 * size + 7

    # Then each full batch was stored before the next was read; the rest waits for a flush
    assert held == [0, 0, 0, 0]
    assert [len(b) for b in store.batches] == [size, size, size]
    assert rec.flush() is True
    assert sum(len(b) for b in store.batches) == 3 * size + 7


def test_a_refused_write_stops_the_draining_and_leaves_the_rest_in_redis(monkeypatch):
    import json

    monkeypatch.setattr(recorder_module, "FLUSH_INTERVAL_S", 3600)
    size = recorder_module.BATCH
    left = [
        json.dumps({"kind": "queued", "job_id": f"j{i}", "at": 1.0}).encode()
        for i in range(3 * size)
    ]

    def source(count: int) -> list[bytes]:
        taken = left[:count]
        del left[:count]
        return taken

    rec = Recorder(store_factory=lambda: Store(down=True), source=source)

    assert rec.drain() == size
    assert len(left) == 2 * size  # not read while the database refuses
