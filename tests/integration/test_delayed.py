"""Parked jobs (``core.delayed``), their mover (``worker.mover``) and the ledger, on real Redis."""

import threading
import time
from collections import Counter

import pytest
import redis

from emailq.core import delayed
from emailq.worker import mover as mover_module
from emailq.worker.ledger import Ledger
from emailq.worker.mover import CLAIM_TIMEOUT_S, Mover

T0 = 1_700_000_000.0  # an explicit clock for move_due/recover


class Recorder:
    """A ``publish`` callback that remembers every entry, optionally failing on some."""

    def __init__(self, fail_on: set[str] = frozenset()) -> None:
        self.entries: list[dict] = []
        self.fail_on = set(fail_on)
        self._lock = threading.Lock()

    def __call__(self, entry: dict) -> None:
        if entry["task_id"] in self.fail_on:
            raise redis.ConnectionError(f"broker unreachable for {entry['task_id']}")
        with self._lock:
            self.entries.append(entry)

    @property
    def ids(self) -> list[str]:
        with self._lock:
            return [e["task_id"] for e in self.entries]


def entry(job_id: str) -> dict:
    return {"task_id": job_id, "kwargs": {"to": [f"{job_id}@example.com"]}, "queue": "normal"}


def parked(job_id: str) -> dict:
    """``entry(job_id)`` as the mover reads it back: with the defaults park() fills in."""
    return {**entry(job_id), "task": "emailq.send", "retries": 0, "expires": None}


def park(client, item: dict, due: float) -> None:
    delayed.park(client, **item, due=due)


@pytest.fixture
def client(session_redis):
    return session_redis.client()


# Mover.move_due


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2]",
        b'{"task_id": "x"}',
        b'{"task_id": "x", "kwargs": {}, "queue": "bulk"}',
    ],
)
def test_a_malformed_entry_is_rejected_alone_and_the_others_go_out(client, raw):
    published, rejected = Recorder(), []
    mover = Mover(client, published, reject=lambda item, exc: rejected.append(item))
    park(client, entry("a"), T0)
    client.zadd(delayed.DELAYED, {raw: T0 - 1})  # sorts first, as a poisoned entry would
    park(client, entry("b"), T0)

    assert mover.move_due(now=T0) == 2

    assert published.ids == ["a", "b"]
    assert rejected == [raw]
    assert delayed.pending(client) == 0


def test_an_entry_the_broker_refuses_for_itself_is_rejected_alone(client):
    def publish(item: dict) -> None:
        if item["task_id"] == "bad":
            raise TypeError("not serialisable")
        published.append(item["task_id"])

    published, rejected = [], []
    mover = Mover(client, publish, reject=lambda item, exc: rejected.append(exc))
    for job_id in ("a", "bad", "b"):
        park(client, entry(job_id), T0)

    assert mover.move_due(now=T0) == 2

    assert published == ["a", "b"] and [type(e) for e in rejected] == [TypeError]
    assert delayed.pending(client) == 0


def test_an_entry_is_not_published_before_its_due_time(client):
    published = Recorder()
    mover = Mover(client, published)
    park(client, entry("a"), T0 + 10)

    assert mover.move_due(now=T0) == 0
    assert mover.move_due(now=T0 + 9.999) == 0

    assert published.entries == []
    assert delayed.pending(client) == 1


def test_an_entry_is_published_once_at_its_due_time(client):
    published = Recorder()
    mover = Mover(client, published)
    park(client, entry("a"), T0 + 10)

    assert mover.move_due(now=T0 + 10) == 1
    assert mover.move_due(now=T0 + 20) == 0

    assert published.entries == [
        {**entry("a"), "task": "emailq.send", "retries": 0, "expires": None}
    ]
    assert delayed.pending(client) == 0


def test_entries_are_published_in_due_order_not_park_order(client):
    published = Recorder()
    mover = Mover(client, published)
    park(client, entry("c"), T0 + 3)
    park(client, entry("a"), T0 + 1)
    park(client, entry("d"), T0 + 4)
    park(client, entry("b"), T0 + 2)

    assert mover.move_due(now=T0 + 5) == 4

    assert published.ids == ["a", "b", "c", "d"]


def test_only_the_entries_already_due_are_published(client):
    published = Recorder()
    mover = Mover(client, published)
    for i in range(10):
        park(client, entry(f"job-{i}"), T0 + i)

    assert mover.move_due(now=T0 + 4.5) == 5

    assert published.ids == [f"job-{i}" for i in range(5)]
    assert delayed.pending(client) == 5


def test_one_move_due_call_moves_more_than_one_batch(client):
    count = mover_module.BATCH * 2 + 200  # 1200: two full batches and a partial one
    published = Recorder()
    mover = Mover(client, published)
    pipe = client.pipeline()
    for i in range(count):
        park(pipe, entry(f"job-{i:05}"), T0 + i / 1000)
    pipe.execute()

    assert mover.move_due(now=T0 + 10) == count

    assert published.ids == [f"job-{i:05}" for i in range(count)]
    assert delayed.pending(client) == 0


def test_two_concurrent_movers_publish_every_entry_exactly_once(session_redis):
    count = 2000
    setup = session_redis.client()
    pipe = setup.pipeline()
    for i in range(count):
        park(pipe, entry(f"job-{i:05}"), T0 + i / 1000)
    pipe.execute()
    published = Recorder()
    movers = [Mover(session_redis.client(), published) for _ in range(2)]
    start = threading.Barrier(len(movers))
    errors: list[BaseException] = []

    def run(mover: Mover) -> None:
        try:
            start.wait()
            deadline = time.monotonic() + 30
            while delayed.pending(mover.redis) and time.monotonic() < deadline:
                mover.move_due(now=T0 + 10)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(m,)) for m in movers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    counts = Counter(published.ids)
    assert len(counts) == count
    assert [job for job, n in counts.items() if n != 1] == []
    assert delayed.pending(setup) == 0


# A failed publish, and recover()


def test_an_entry_whose_publish_fails_stays_claimed_and_counted(client):
    mover = Mover(client, Recorder(fail_on={"a"}))
    park(client, entry("a"), T0)

    with pytest.raises(redis.ConnectionError, match="broker unreachable for a"):
        mover.move_due(now=T0 + 1)

    assert client.zcard(delayed.DELAYED) == 0
    assert client.hlen(delayed.DELAYED_CLAIMED) == 1
    assert delayed.pending(client) == 1


def test_a_failed_publish_is_not_retried_while_the_claim_is_fresh(client):
    published = Recorder(fail_on={"a"})
    mover = Mover(client, published)
    park(client, entry("a"), T0)
    with pytest.raises(redis.ConnectionError):
        mover.move_due(now=T0 + 1)
    published.fail_on.clear()

    assert mover.move_due(now=T0 + 2) == 0
    assert mover.recover(now=T0 + 1 + CLAIM_TIMEOUT_S / 2) == 0

    assert published.entries == []
    assert client.hlen(delayed.DELAYED_CLAIMED) == 1
    assert delayed.pending(client) == 1


def test_recover_puts_a_stale_claim_back_and_a_later_move_publishes_it(client):
    published = Recorder(fail_on={"a"})
    mover = Mover(client, published)
    park(client, entry("a"), T0)
    with pytest.raises(redis.ConnectionError):
        mover.move_due(now=T0 + 1)
    published.fail_on.clear()
    later = T0 + 1 + CLAIM_TIMEOUT_S + 1

    assert mover.recover(now=later) == 1

    assert client.hlen(delayed.DELAYED_CLAIMED) == 0
    assert client.zcard(delayed.DELAYED) == 1
    assert mover.move_due(now=later) == 1
    assert published.entries == [
        {**entry("a"), "task": "emailq.send", "retries": 0, "expires": None}
    ]
    assert delayed.pending(client) == 0


def test_recover_leaves_fresh_claims_alone_and_takes_only_stale_ones(client):
    published = Recorder(fail_on={"old", "new"})
    mover = Mover(client, published)
    park(client, entry("old"), T0)
    with pytest.raises(redis.ConnectionError):
        mover.move_due(now=T0)
    park(client, entry("new"), T0 + 50)
    with pytest.raises(redis.ConnectionError):
        mover.move_due(now=T0 + 50)
    published.fail_on.clear()
    now = T0 + CLAIM_TIMEOUT_S + 5  # "old" claimed 65 s ago, "new" 15 s ago

    assert mover.recover(now=now) == 1

    assert client.hlen(delayed.DELAYED_CLAIMED) == 1
    assert mover.move_due(now=now) == 1
    assert published.ids == ["old"]
    assert delayed.pending(client) == 1


def test_entries_claimed_behind_a_failed_publish_are_recovered_too(client):
    published = Recorder(fail_on={"b"})
    mover = Mover(client, published)
    for i, job in enumerate("abcd"):
        park(client, entry(job), T0 + i)
    with pytest.raises(redis.ConnectionError):
        mover.move_due(now=T0 + 10)
    published.fail_on.clear()
    assert published.ids == ["a"]
    assert delayed.pending(client) == 3  # b failed; c and d were claimed in the same batch

    assert mover.recover(now=T0 + 10 + CLAIM_TIMEOUT_S + 1) == 3
    assert mover.move_due(now=T0 + 10 + CLAIM_TIMEOUT_S + 1) == 3

    assert sorted(published.ids) == ["a", "b", "c", "d"]
    assert delayed.pending(client) == 0


# The background thread


def test_the_background_mover_publishes_an_entry_soon_after_it_is_due(client):
    published = Recorder()
    mover = Mover(client, published, interval_s=0.05)
    park(client, entry("a"), time.time() + 0.3)

    mover.start()
    try:
        deadline = time.monotonic() + 5
        while not published.entries and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        mover.stop()

    assert published.entries == [
        {**entry("a"), "task": "emailq.send", "retries": 0, "expires": None}
    ]
    assert delayed.pending(client) == 0


def test_the_background_mover_keeps_going_after_a_publish_fails(client):
    published = Recorder(fail_on={"bad"})
    mover = Mover(client, published, interval_s=0.05)
    park(client, entry("bad"), time.time() - 1)
    park(client, entry("good"), time.time() + 0.3)

    mover.start()
    try:
        deadline = time.monotonic() + 5
        while not published.entries and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        mover.stop()

    assert published.ids == ["good"]
    assert client.hlen(delayed.DELAYED_CLAIMED) == 1  # "bad" waits for recover, not lost


def test_stop_ends_the_background_thread(client):
    mover = Mover(client, Recorder(), interval_s=0.05).start()

    mover.stop()

    assert mover._thread is not None
    assert not mover._thread.is_alive()


# Ledger


def test_begin_takes_the_lock_and_a_second_begin_is_refused_while_it_is_held(client):
    ledger = Ledger(client)

    first, _ = ledger.begin("job-1", lock_ttl_s=60)
    second, _ = ledger.begin("job-1", lock_ttl_s=60)

    assert first is not None
    assert second is None


def test_the_lock_is_per_job(client):
    ledger = Ledger(client)

    first, _ = ledger.begin("job-1", lock_ttl_s=60)
    other, _ = ledger.begin("job-2", lock_ttl_s=60)

    assert first is not None
    assert other is not None


def test_record_with_the_token_releases_the_lock(client):
    ledger = Ledger(client)
    token, state = ledger.begin("job-1", lock_ttl_s=60)

    ledger.record("job-1", state, delivered=["ann@example.com"], token=token)
    again, _ = ledger.begin("job-1", lock_ttl_s=60)

    assert again is not None
    assert again != token


def test_record_without_the_token_keeps_the_lock(client):
    ledger = Ledger(client)
    token, state = ledger.begin("job-1", lock_ttl_s=60)

    ledger.record("job-1", state, delivered=["ann@example.com"])

    assert ledger.begin("job-1", lock_ttl_s=60)[0] is None
    ledger.release("job-1", token)
    assert ledger.begin("job-1", lock_ttl_s=60)[0] is not None


def test_a_stale_token_does_not_release_someone_elses_lock(client):
    ledger = Ledger(client)
    token, _ = ledger.begin("job-1", lock_ttl_s=60)
    ledger.release("job-1", token)
    holder, _ = ledger.begin("job-1", lock_ttl_s=60)

    ledger.release("job-1", token)  # the first worker, late

    assert holder is not None
    assert ledger.begin("job-1", lock_ttl_s=60)[0] is None


def test_delivered_failed_attempts_and_final_round_trip_through_state(client):
    ledger = Ledger(client)
    token, state = ledger.begin("job-1", lock_ttl_s=60)

    ledger.record(
        "job-1",
        state,
        delivered=["ann@example.com", "bob@example.com"],
        failed={"carl@example.com": (550, "5.1.1 No such user")},
        attempt={"outcome": "partial", "smtp_code": 250},
        final="sent",
        token=token,
    )
    stored = ledger.state("job-1")

    assert stored.delivered == {"ann@example.com", "bob@example.com"}
    assert stored.failed == {"carl@example.com": (550, "5.1.1 No such user")}
    assert [{k: v for k, v in a.items() if k != "at"} for a in stored.attempts] == [
        {"outcome": "partial", "smtp_code": 250}
    ]
    assert isinstance(stored.attempts[0]["at"], float)
    assert stored.final == "sent"
    assert stored.starts == 1
    assert stored.unrecorded_starts == 0


def test_begin_returns_the_state_recorded_so_far(client):
    ledger = Ledger(client)
    token, state = ledger.begin("job-1", lock_ttl_s=60)
    ledger.record(
        "job-1", state, delivered=["ann@example.com"], attempt={"outcome": "t"}, token=token
    )

    _, seen = ledger.begin("job-1", lock_ttl_s=60)

    assert seen.delivered == {"ann@example.com"}
    assert len(seen.attempts) == 1
    assert seen.starts == 2


def test_attempts_accumulate_across_records(client):
    ledger = Ledger(client)
    for outcome in ("transient", "sent"):
        token, state = ledger.begin("job-1", lock_ttl_s=60)
        ledger.record("job-1", state, attempt={"outcome": outcome}, token=token)

    assert [a["outcome"] for a in ledger.state("job-1").attempts] == ["transient", "sent"]


def test_starts_counts_only_begins_that_took_the_lock(client):
    ledger = Ledger(client)
    token, state = ledger.begin("job-1", lock_ttl_s=60)
    for _ in range(3):
        assert ledger.begin("job-1", lock_ttl_s=60)[0] is None
    assert ledger.state("job-1").starts == 1

    ledger.record("job-1", state, attempt={"outcome": "transient"}, token=token)
    ledger.begin("job-1", lock_ttl_s=60)

    assert ledger.state("job-1").starts == 2


def test_a_begin_without_a_recorded_attempt_counts_as_an_unrecorded_start(client):
    ledger = Ledger(client)
    ledger.begin("job-1", lock_ttl_s=1)  # the worker dies; its lock expires

    client.delete("emailq:job:job-1:lock")  # as if the 1 s TTL passed
    _, state = ledger.begin("job-1", lock_ttl_s=60)

    assert state.starts == 2
    assert state.unrecorded_starts == 2


def test_the_job_state_expires_after_the_state_ttl(client):
    ledger = Ledger(client)
    token, state = ledger.begin("job-1", lock_ttl_s=60)
    ledger.record("job-1", state, delivered=["ann@example.com"], token=token)

    assert 0 < client.ttl("emailq:job:job-1") <= 30 * 24 * 3600


def test_the_lock_expires_after_its_ttl(client):
    ledger = Ledger(client)
    ledger.begin("job-1", lock_ttl_s=60)

    assert 0 < client.ttl("emailq:job:job-1:lock") <= 60


def test_reopen_forgets_failures_attempts_and_verdict_but_keeps_delivered(client):
    ledger = Ledger(client)
    token, state = ledger.begin("job-1", lock_ttl_s=60)
    ledger.record(
        "job-1",
        state,
        delivered=["ann@example.com"],
        failed={"bob@example.com": (550, "5.1.1 No such user")},
        attempt={"outcome": "permanent"},
        final="dead",
        token=token,
    )

    ledger.reopen("job-1")
    reopened = ledger.state("job-1")

    assert reopened.delivered == {"ann@example.com"}
    assert reopened.failed == {}
    assert reopened.attempts == []
    assert reopened.final is None
    assert reopened.unrecorded_starts == 0


def test_reopen_of_an_unknown_job_does_nothing(client):
    ledger = Ledger(client)

    ledger.reopen("never-seen")

    assert ledger.state("never-seen").delivered == set()
    assert client.exists("emailq:job:never-seen") == 0
