"""Every fault ends where it should: delivered after retries, or dead-lettered with its reason.

The SMTP server is real (aiosmtpd, STARTTLS and AUTH); its handler injects each fault.
Backoff is 1 s doubling, without jitter, so the retry schedule is predictable.
"""

import time

import pytest

from producer import enqueue_email
from tests.support.smtp import DROP
from worker import deadletter
from worker.errors import PermanentError

FAST_RETRIES = {
    "RETRY_BACKOFF_BASE_S": "1",
    "RETRY_BACKOFF_MAX_S": "8",
    "RETRY_JITTER": "false",
    "MAX_RETRIES": "4",
}


@pytest.fixture
def worker(smtp_server, start_worker):
    return start_worker(smtp_server, concurrency=4, **FAST_RETRIES)


def _dead(redis, timeout: float = 30.0, count: int = 1) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = [s.entry for s in deadletter.read(redis)]
        if len(entries) >= count:
            return entries
        time.sleep(0.1)
    raise TimeoutError(f"{len(entries)} of {count} dead letters after {timeout}s")


def _send(to, **extra):
    return enqueue_email.delay(to=to, subject="Fault test", text="body", **extra)


TRANSIENT = [
    "421 4.4.2 Timeout",
    "450 4.2.1 Mailbox busy",
    "451 4.3.0 Local error",
    "452 4.5.3 Too many",
]
PERMANENT = ["550 5.1.1 No such user", "553 5.1.3 Bad address", "554 5.7.1 Rejected"]


def test_transient_replies_at_rcpt_and_data_are_retried_until_delivered(smtp_server, worker):
    # Given each transient code, twice, at RCPT for one job and at DATA for another
    handler = smtp_server.handler
    jobs = {}
    for reply in TRANSIENT:
        code = reply[:3]
        rcpt, data = f"rcpt{code}@example.com", f"data{code}@example.com"
        handler.rcpt_replies[rcpt] = [reply, reply]
        handler.data_replies_for[data] = [reply, reply]
        jobs[rcpt] = _send(rcpt)
        jobs[data] = _send(data)

    # Then each is delivered on the third attempt, exactly once
    for address, result in jobs.items():
        assert result.get(timeout=60)["accepted"] == [address], address
    delivered = [m.rcpt_tos[0] for m in handler.wait_for(len(jobs))]
    assert sorted(delivered) == sorted(jobs)
    for address in jobs:
        verb = "RCPT" if address.startswith("rcpt") else "DATA"
        assert len(handler.attempts(address, verb)) == 3, address


def test_permanent_replies_at_rcpt_and_data_dead_letter_without_retrying(
    smtp_server, worker, session_redis
):
    handler = smtp_server.handler
    jobs = {}
    for reply in PERMANENT:
        code = reply[:3]
        rcpt, data = f"rcpt{code}@example.com", f"data{code}@example.com"
        handler.rcpt_replies[rcpt] = reply
        handler.data_replies_for[data] = [reply]
        jobs[rcpt] = _send(rcpt)
        jobs[data] = _send(data)

    entries = {e["job"]["to"][0]: e for e in _dead(session_redis.client(), count=len(jobs))}

    assert handler.messages == []
    for address, result in jobs.items():
        with pytest.raises(PermanentError):
            result.get(timeout=30)
        entry = entries[address]
        code = int(address[4:7])
        assert entry["job_id"] == result.id
        assert entry["reason"] == "permanent", address
        assert entry["smtp_code"] == code
        assert entry["failed_recipients"][address][0] == code
        assert len(entry["attempts"]) == 1  # a permanent refusal is never retried
        assert entry["job"]["subject"] == "Fault test"
        verb = "RCPT" if address.startswith("rcpt") else "DATA"
        assert len(handler.attempts(address, verb)) == 1


def test_one_refused_recipient_of_three_is_dead_lettered_and_the_others_get_it_once(
    smtp_server, worker, session_redis
):
    smtp_server.handler.rcpt_replies["gone@example.com"] = "550 5.1.1 No such user"

    result = _send(["ann@example.com", "gone@example.com"], cc="bob@example.com")

    [entry] = _dead(session_redis.client())
    [received] = smtp_server.handler.wait_for(1)
    assert sorted(received.rcpt_tos) == ["ann@example.com", "bob@example.com"]
    assert entry["reason"] == "permanent"
    assert entry["failed_recipients"] == {"gone@example.com": [550, "5.1.1 No such user"]}
    assert entry["delivered_recipients"] == ["ann@example.com", "bob@example.com"]
    with pytest.raises(PermanentError):
        result.get(timeout=10)


def test_a_transiently_refused_recipient_is_retried_on_its_own(smtp_server, worker):
    smtp_server.handler.rcpt_replies["busy@example.com"] = ["451 4.2.0 Try later"] * 2

    result = _send(["ann@example.com", "busy@example.com", "bob@example.com"])

    assert sorted(result.get(timeout=60)["accepted"]) == [
        "ann@example.com", "bob@example.com", "busy@example.com",
    ]  # fmt: skip
    first, *retries = smtp_server.handler.wait_for(2)
    assert sorted(first.rcpt_tos) == ["ann@example.com", "bob@example.com"]
    assert [m.rcpt_tos for m in retries] == [["busy@example.com"]]
    assert len(smtp_server.handler.attempts("ann@example.com")) == 1  # never re-sent
    assert first.message["Message-ID"] == retries[0].message["Message-ID"]


def test_a_connection_cut_after_the_final_dot_is_retried(smtp_server, worker):
    smtp_server.handler.data_replies_for["ann@example.com"] = [DROP]

    result = _send("ann@example.com")

    assert result.get(timeout=60)["accepted"] == ["ann@example.com"]
    assert len(smtp_server.handler.attempts("ann@example.com", "DATA")) == 2
    [received] = smtp_server.handler.wait_for(1)
    assert received.message["Message-ID"] == f"<{result.id}@example.com>"


def test_a_server_that_is_down_for_a_while_gets_the_job_when_it_is_back(smtp_server, worker):
    smtp_server.down()
    result = _send("ann@example.com")
    time.sleep(4)  # a few refused connection attempts

    smtp_server.up()

    assert result.get(timeout=60)["accepted"] == ["ann@example.com"]
    assert [m.rcpt_tos for m in smtp_server.handler.wait_for(1)] == [["ann@example.com"]]


def test_backoff_intervals_grow(smtp_server, worker):
    smtp_server.handler.rcpt_replies["ann@example.com"] = ["450 4.2.1 Busy"] * 4

    _send("ann@example.com").get(timeout=90)

    times = [t for t, _ in smtp_server.handler.attempts("ann@example.com")]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert len(gaps) == 4
    assert gaps == sorted(gaps), gaps  # 1, 2, 4, 8 s with jitter off
    assert gaps[-1] > 2 * gaps[0]


def test_retries_run_out_into_the_dead_letter_queue_as_exhausted(
    smtp_server, start_worker, session_redis
):
    start_worker(smtp_server, **{**FAST_RETRIES, "MAX_RETRIES": "2"})
    smtp_server.handler.rcpt_replies["ann@example.com"] = "451 4.3.0 Still down"

    _send("ann@example.com")

    [entry] = _dead(session_redis.client(), timeout=60)
    assert entry["reason"] == "exhausted"
    assert len(entry["attempts"]) == 3  # the first try and two retries
    assert [a["smtp_code"] for a in entry["attempts"]] == [451, 451, 451]
    assert all(a["at"] for a in entry["attempts"])
    assert entry["failed_recipients"] == {"ann@example.com": [451, "4.3.0 Still down"]}
    assert smtp_server.handler.messages == []


def test_a_rejected_login_is_retried_with_a_critical_log_and_never_dead_lettered(
    smtp_server, worker, session_redis
):
    smtp_server.handler.auth_failures = 3

    result = _send("ann@example.com")

    assert result.get(timeout=90)["accepted"] == ["ann@example.com"]
    assert deadletter.read(session_redis.client()) == []
    worker.stop()
    critical = [line for line in worker.log().splitlines() if "CRITICAL" in line]
    assert len(critical) == 3
    assert all("EMAIL_PASSWORD" in line and "535" in line for line in critical)
