"""Job locks renewed while held, and outcomes kept while Redis is away; on real redis-servers."""

import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from emailq.worker.ledger import Ledger
from emailq.worker.locks import Renewer
from tests.support.redis import RedisServer


def _client(server: RedisServer) -> redis.Redis:
    # No client-side retries: the test stops Redis and wants the failure at once.
    return redis.Redis(
        host="127.0.0.1", port=server.port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )


@pytest.fixture
def private_redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def test_a_held_lock_outlives_its_ttl_and_a_dead_holders_lock_does_not(private_redis):
    # Given two locks with a 1 s TTL: one held by a live renewer, one by a dead worker
    client = private_redis.client()
    renewer = Renewer(client, ttl_s=1)
    ledger = Ledger(client, renewer=renewer)
    held, _ = ledger.begin("live", lock_ttl_s=1, hold_s=60)
    Ledger(client).begin("dead", lock_ttl_s=1)  # no renewer: its worker is gone

    time.sleep(2.5)

    # Then the live one is still locked, the dead one's job is free again
    assert ledger.begin("live", lock_ttl_s=1)[0] is None
    assert ledger.begin("dead", lock_ttl_s=1)[0] is not None
    # And once released, the live one is no longer renewed
    ledger.release("live", held)
    assert renewer.held() == []


def test_a_lock_is_not_renewed_past_its_deadline(private_redis):
    client = private_redis.client()
    ledger = Ledger(client, renewer=Renewer(client, ttl_s=1))
    ledger.begin("wedged", lock_ttl_s=1, hold_s=1.2)  # a thread that never comes back

    time.sleep(3)

    assert ledger.begin("wedged", lock_ttl_s=1)[0] is not None


def _owing(server: RedisServer) -> Ledger:
    """A ledger whose job was sent, with Redis gone before the outcome was written."""
    ledger = Ledger(_client(server))
    token, state = ledger.begin("job-1", lock_ttl_s=60)
    server.stop()
    with pytest.raises(redis.ConnectionError):
        ledger.record("job-1", state, delivered=["ann@example.com"], final="sent", token=token)
    return ledger


def test_an_outcome_redis_could_not_take_is_written_when_it_answers(private_redis):
    # Given a send the server accepted, and Redis gone before the ledger heard of it
    ledger = _owing(private_redis)
    assert ledger.unwritten() == ["job-1"]

    # When Redis is back (empty: the worst case), the kept outcome is written
    private_redis.start()
    deadline = time.monotonic() + 10
    while ledger.unwritten() and time.monotonic() < deadline:
        time.sleep(0.1)

    # Then taking the job again finds it sent
    token, state = ledger.begin("job-1", lock_ttl_s=60)
    assert state.final == "sent" and state.delivered == {"ann@example.com"}


def test_the_job_is_not_taken_again_while_its_outcome_is_still_owed(private_redis):
    ledger = _owing(private_redis)

    # While Redis is away, the job cannot be begun: its outcome would be lost
    with pytest.raises(redis.ConnectionError):
        ledger.begin("job-1", lock_ttl_s=60)

    private_redis.start()
    _, state = ledger.begin("job-1", lock_ttl_s=60)  # writes what it owes first
    assert state.final == "sent"


def test_a_busy_job_learns_how_long_the_other_workers_lock_has_left(session_redis):
    client = session_redis.client()
    Ledger(client).begin("held", lock_ttl_s=10)  # a worker that died holding the job

    token, state = Ledger(client).begin("held", lock_ttl_s=10)

    assert token is None
    assert 9 < state.locked_for_s <= 10
