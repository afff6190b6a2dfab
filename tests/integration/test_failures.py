"""Every fault ends where it should: delivered after retries, or dead-lettered with its reason.

The SMTP server is real (aiosmtpd, STARTTLS and AUTH); its handler injects each fault.
Backoff is 1 s doubling, without jitter, so the retry schedule is predictable.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emailq.core import delayed
from emailq.core.errors import PermanentError
from emailq.producer import enqueue_email
from emailq.worker import deadletter
from emailq.worker.app import app
from tests.support.faults import FAST_RETRIES, dead_letters
from tests.support.smtp import DROP


@pytest.fixture
def worker(smtp_server, start_worker):
    return start_worker(smtp_server, concurrency=4, **FAST_RETRIES)


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

    entries = {e["job"]["to"][0]: e for e in dead_letters(session_redis.client(), count=len(jobs))}

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


def test_one_refused_recipient_of_three_is_dead_lettered_and_the_job_is_partial(
    smtp_server, worker, session_redis
):
    smtp_server.handler.rcpt_replies["gone@example.com"] = "550 5.1.1 No such user"

    result = _send(["ann@example.com", "gone@example.com"], cc="bob@example.com")

    # The job is partial, not a failure: its result names who got it and who did not
    outcome = result.get(timeout=30)
    assert outcome["status"] == "partial"
    assert outcome["accepted"] == ["ann@example.com", "bob@example.com"]
    assert outcome["refused"] == {"gone@example.com": [550, "5.1.1 No such user"]}
    [entry] = dead_letters(session_redis.client())
    [received] = smtp_server.handler.wait_for(1)
    assert sorted(received.rcpt_tos) == ["ann@example.com", "bob@example.com"]
    assert entry["reason"] == "permanent"
    assert entry["failed_recipients"] == {"gone@example.com": [550, "5.1.1 No such user"]}
    assert entry["delivered_recipients"] == ["ann@example.com", "bob@example.com"]
    # And `emailq status` says partial
    deadline = time.monotonic() + 20
    while (status := _status(result.id)).get("status") != "partial":
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    assert status["delivered_to"] == ["ann@example.com", "bob@example.com"]


def _status(job_id: str) -> dict:
    out = subprocess.run(
        [str(Path(sys.executable).with_name("emailq")), "status", job_id, "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return json.loads(out.stdout) if out.returncode == 0 else {}


def test_a_permanent_refusal_is_dead_lettered_at_once_while_a_deferral_is_retried(
    smtp_server, worker, session_redis
):
    # Given one recipient refused for good and one deferred twice, in the same job
    handler = smtp_server.handler
    handler.rcpt_replies["gone@example.com"] = "550 5.1.1 No such user"
    handler.rcpt_replies["busy@example.com"] = ["451 4.2.0 Try later"] * 2

    result = _send(["ann@example.com", "gone@example.com", "busy@example.com"])

    # Then the refusal is in the dead-letter queue before the deferred one is retried
    [entry] = dead_letters(session_redis.client())
    assert list(entry["failed_recipients"]) == ["gone@example.com"]
    assert len(handler.attempts("busy@example.com")) == 1
    # And once the deferred one has it, the job is partial, with one dead-letter entry
    outcome = result.get(timeout=60)
    assert outcome["status"] == "partial"
    assert outcome["accepted"] == ["ann@example.com", "busy@example.com"]
    time.sleep(1)
    [entry] = [s.entry for s in deadletter.read(session_redis.client())]
    assert entry["failed_recipients"] == {"gone@example.com": [550, "5.1.1 No such user"]}
    assert sorted(entry["delivered_recipients"]) == ["ann@example.com", "busy@example.com"]


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

    [entry] = dead_letters(session_redis.client(), timeout=60)
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


def test_a_malformed_payload_that_bypassed_the_producer_is_dead_lettered_as_invalid(
    smtp_server, worker, session_redis
):
    # send_task skips enqueue_email's validation, as a foreign producer would
    app.send_task("emailq.send", kwargs={"subject": "no recipients"}, queue="normal")

    [entry] = dead_letters(session_redis.client())
    assert entry["reason"] == "invalid"
    assert entry["job"] == {"subject": "no recipients"}
    assert "malformed job payload" in entry["error"]
    assert smtp_server.messages == []


def test_a_payload_of_the_wrong_shape_from_the_queue_is_dead_lettered_as_invalid(
    smtp_server, worker, session_redis
):
    # Given a job published around the producer, with a header value that is not a string
    app.send_task(
        "emailq.send",
        kwargs={"to": ["ann@example.com"], "subject": "s", "text": "t", "headers": {"X-N": 5}},
        queue="normal",
    )

    # Then the worker checks the payload's shape itself, and does not retry it
    [entry] = dead_letters(session_redis.client())
    assert entry["reason"] == "invalid"
    assert "headers" in entry["error"]
    assert smtp_server.messages == []
    time.sleep(2)
    assert len(deadletter.read(session_redis.client())) == 1


def test_a_retry_longer_than_the_visibility_timeout_sends_once(
    smtp_server, start_worker, session_redis
):
    # Given two workers whose broker hands unacknowledged jobs on after 2 s, and a
    # retry delay of 4 s: held in a worker, the retry would be delivered twice
    env = {**FAST_RETRIES, "VISIBILITY_TIMEOUT_S": "2", "RETRY_BACKOFF_BASE_S": "4"}
    workers = [start_worker(smtp_server, **env), start_worker(smtp_server, **env)]
    smtp_server.handler.rcpt_replies["ann@example.com"] = ["451 4.3.0 Later"]

    result = _send("ann@example.com")

    # Then the retry waits parked in Redis, not unacknowledged in a worker
    deadline = time.monotonic() + 10
    while not delayed.pending(session_redis.client()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert delayed.pending(session_redis.client()) == 1
    # And it arrives once, on the retry; no worker ever sees a second copy
    assert result.get(timeout=60)["accepted"] == ["ann@example.com"]
    time.sleep(2 + 5 + 3)  # visibility timeout + restore sweep + margin
    assert [m.rcpt_tos for m in smtp_server.messages] == [["ann@example.com"]]
    assert len(smtp_server.handler.attempts("ann@example.com")) == 2
    for worker in workers:
        worker.stop()
        assert "skipping the duplicate" not in worker.log()


def test_a_completed_job_delivered_again_by_the_broker_is_not_sent_twice(smtp_server, worker):
    result = _send("ann@example.com")
    result.get(timeout=30)

    # The broker redelivers the same job (same id), as after a lost acknowledgement
    enqueue_email.apply_async(
        kwargs={"to": "ann@example.com", "subject": "Fault test", "text": "body"}, task_id=result.id
    )

    deadline = time.monotonic() + 30
    while "skipping the duplicate" not in worker.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f"job {result.id} already sent; skipping the duplicate" in worker.log()
    assert len(smtp_server.messages) == 1


def test_a_job_whose_workers_keep_dying_is_dead_lettered_as_crashed(
    smtp_server, worker, session_redis
):
    # Given a job that three workers already took and died with, lock expired each time
    from emailq.worker.ledger import Ledger

    ledger = Ledger(session_redis.client())
    job_id = "poison-job"
    for _ in range(4):
        token, _ = ledger.begin(job_id, lock_ttl_s=60)
        ledger.release(job_id, token)

    # When it is delivered once more
    enqueue_email.apply_async(
        kwargs={"to": "ann@example.com", "subject": "s", "text": "t"}, task_id=job_id
    )

    # Then it is dead-lettered instead of taking down another worker
    [entry] = dead_letters(session_redis.client())
    assert entry["reason"] == "crashed" and "died" in entry["error"]
    assert smtp_server.messages == []
