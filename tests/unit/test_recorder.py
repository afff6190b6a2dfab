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
