"""The circuit breaker per SMTP account: a relay outage spends no job's retry budget."""

import time

import pytest

from emailq.core.errors import CircuitOpen
from emailq.producer import enqueue_email
from emailq.worker import circuit as circuit_module
from emailq.worker.circuit import THRESHOLD, Circuit
from tests.support.faults import FAST_RETRIES, dead_letters


def test_the_circuit_opens_after_a_run_of_failures_then_lets_one_probe_through(
    session_redis, monkeypatch
):
    monkeypatch.setattr(circuit_module, "BASE_S", 0.5)
    first, second = (Circuit(session_redis.client(), "relay:587:me") for _ in range(2))

    for _ in range(THRESHOLD - 1):
        first.check()
        assert first.failed() == 0  # a few failures: still closed
    assert first.failed() == 0.5  # the run is long enough: open, for everyone
    with pytest.raises(CircuitOpen):
        second.check()

    time.sleep(0.6)
    first.check()  # the open period is over: this worker probes...
    with pytest.raises(CircuitOpen):
        second.check()  # ...and the others wait for its answer
    assert first.failed() == 1.0  # the probe failed: open again, twice as long
    assert first.state()["state"] == "open"

    time.sleep(1.1)
    second.check()
    second.succeeded()  # the probe got through: closed for everyone
    first.check()
    assert first.state() == {"state": "closed", "failures": 0}


def test_a_relay_down_for_a_while_dead_letters_nothing_with_no_retry_budget(
    smtp_server, start_worker, session_redis
):
    # Given a relay that refuses connections, and jobs with no retry budget at all
    worker = start_worker(smtp_server, **{**FAST_RETRIES, "MAX_RETRIES": "0"})
    smtp_server.down()
    results = [
        enqueue_email.delay(to=f"user{i}@example.com", subject="During", text="x") for i in range(8)
    ]

    # When it comes back after a while
    time.sleep(6)
    smtp_server.up()

    # Then every job goes out, none is dead-lettered, and the outage was logged once
    for result in results:
        assert result.get(timeout=60)["accepted"]
    with pytest.raises(TimeoutError):
        dead_letters(session_redis.client(), timeout=1)
    assert worker.log().count("connection failures in a row") == 1
