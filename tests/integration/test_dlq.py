"""`emailq dlq` on real dead letters: list, show, replay and purge."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from emailq.producer import enqueue_email
from emailq.worker import deadletter
from emailq.worker.app import app
from tests.support.faults import FAST_RETRIES, dead_letters

EMAILQ = str(Path(sys.executable).with_name("emailq"))


def emailq(redis_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "REDIS_URL": redis_url, "COLUMNS": "200"}
    return subprocess.run([EMAILQ, *args], env=env, capture_output=True, text=True, timeout=60)


def test_list_and_show_describe_a_dead_job(smtp_server, start_worker, session_redis):
    # Given a job refused permanently for one of its two recipients
    start_worker(smtp_server, **FAST_RETRIES)
    smtp_server.handler.rcpt_replies["gone@example.com"] = "550 5.1.1 No such user"
    result = enqueue_email.delay(
        to=["ann@example.com", "gone@example.com"], subject="Invoice 42", text="x", priority="high"
    )
    dead_letters(session_redis.client())

    listed = emailq(session_redis.url, "dlq", "list")
    as_json = json.loads(emailq(session_redis.url, "dlq", "list", "--json").stdout)
    shown = emailq(session_redis.url, "dlq", "show", result.id)

    assert listed.returncode == 0, listed.stderr
    assert result.id in listed.stdout and "permanent" in listed.stdout
    assert "Invoice 42" in listed.stdout
    [entry] = as_json
    assert entry["job_id"] == result.id and entry["reason"] == "permanent"
    assert entry["failed_recipients"] == {"gone@example.com": [550, "5.1.1 No such user"]}
    assert shown.returncode == 0, shown.stderr
    assert "gone@example.com" in shown.stdout and "5.1.1 No such user" in shown.stdout
    assert "ann@example.com" in shown.stdout  # delivered to
    missing = emailq(session_redis.url, "dlq", "show", "no-such-job")
    assert missing.returncode != 0 and "no dead-lettered job" in missing.stderr


def test_replay_sends_only_to_the_failed_recipient_with_the_same_id_and_priority(
    smtp_server, start_worker, session_redis
):
    # Given a high-priority job dead-lettered for one of two recipients
    redis = session_redis.client()
    worker = start_worker(smtp_server, **FAST_RETRIES)
    smtp_server.handler.rcpt_replies["gone@example.com"] = "550 5.1.1 No such user"
    result = enqueue_email.delay(
        to=["ann@example.com", "gone@example.com"], subject="Alert", text="x", priority="high"
    )
    dead_letters(redis)
    worker.stop()

    # When the address is fixed on the server and the job is replayed
    del smtp_server.handler.rcpt_replies["gone@example.com"]
    replayed = emailq(session_redis.url, "dlq", "replay", result.id)

    # Then it is back on the high queue under the same id, and the DLQ is empty
    assert replayed.returncode == 0, replayed.stderr
    [raw] = redis.lrange("high", 0, -1)
    assert json.loads(raw)["headers"]["id"] == result.id
    assert deadletter.read(redis) == []

    # And a worker sends it to the recipient who lacked it, and only to them
    start_worker(smtp_server, **FAST_RETRIES)
    first, second = smtp_server.handler.wait_for(2)
    assert first.rcpt_tos == ["ann@example.com"]
    assert second.rcpt_tos == ["gone@example.com"]
    assert (
        second.message["Message-ID"] == first.message["Message-ID"] == f"<{result.id}@example.com>"
    )
    time.sleep(1)
    assert len(smtp_server.messages) == 2


def test_replay_all_gives_a_fresh_retry_budget(smtp_server, start_worker, session_redis):
    # Given two jobs whose retries ran out while the server deferred them
    redis = session_redis.client()
    worker = start_worker(smtp_server, **{**FAST_RETRIES, "MAX_RETRIES": "1"})
    for name in ("ann", "bob"):
        smtp_server.handler.rcpt_replies[f"{name}@example.com"] = "451 4.3.0 Down"
        enqueue_email.delay(to=f"{name}@example.com", subject="x", text="y")
    entries = dead_letters(redis, count=2, timeout=60)
    assert {e["reason"] for e in entries} == {"exhausted"}
    worker.stop()

    # When the server recovers except for one more deferral each, and all are replayed
    for name in ("ann", "bob"):
        smtp_server.handler.rcpt_replies[f"{name}@example.com"] = ["451 4.3.0 Down"]
    assert emailq(session_redis.url, "dlq", "replay", "--all").returncode == 0
    start_worker(smtp_server, **{**FAST_RETRIES, "MAX_RETRIES": "1"})

    # Then both are delivered: the replay's budget covers the extra deferral
    received = smtp_server.handler.wait_for(2, timeout=60)
    assert sorted(m.rcpt_tos[0] for m in received) == ["ann@example.com", "bob@example.com"]
    assert deadletter.read(redis) == []


def test_purge_removes_entries_by_age(session_redis):
    redis = session_redis.client()
    now = time.time()
    for job_id, age_days in (("old-job", 10), ("new-job", 1)):
        deadletter.publish(
            app,
            {"job_id": job_id, "job": {"to": ["a@example.com"], "subject": "s"},
             "reason": "permanent", "attempts": [], "failed_recipients": {},
             "dead_at": now - age_days * 86400},
        )  # fmt: skip

    older = emailq(session_redis.url, "dlq", "purge", "--older-than", "7", "--yes")
    assert older.returncode == 0 and "purged 1 entry" in older.stdout
    assert [s.entry["job_id"] for s in deadletter.read(redis)] == ["new-job"]
    unconfirmed = emailq(session_redis.url, "dlq", "purge")  # no terminal to ask: refused
    assert unconfirmed.returncode == 1 and "pass --yes" in unconfirmed.stderr
    assert len(deadletter.read(redis)) == 1
    everything = emailq(session_redis.url, "dlq", "purge", "--yes")
    assert "purged 1 entry" in everything.stdout
    assert deadletter.read(redis) == []


def test_replay_with_a_reason_filter_replays_only_the_entries_dead_for_that_reason(
    session_redis,
):
    # Given dead letters for two reasons, one of them in a bulk batch, one dead long ago
    redis = session_redis.client()
    now = time.time()
    for job_id, reason, batch, age_s in (
        ("spent-1", "exhausted", None, 60), ("spent-2", "exhausted", "batch-7", 60),
        ("refused-1", "permanent", None, 60), ("spent-old", "exhausted", None, 3 * 86400),
    ):  # fmt: skip
        job = {"to": [f"{job_id}@example.com"], "subject": "s", "text": "t"}
        if batch:
            job["batch_id"] = batch
        deadletter.publish(
            app,
            {"job_id": job_id, "job": job, "reason": reason, "attempts": [],
             "failed_recipients": {}, "delivered_recipients": [], "dead_at": now - age_s},
        )  # fmt: skip

    # When the exhausted ones of the last day are replayed
    replayed = emailq(session_redis.url, "dlq", "replay", "--reason", "exhausted", "--since", "1d")

    # Then those two are back on their queue under their ids; the others stay dead
    assert replayed.returncode == 0, replayed.stderr
    assert sorted(replayed.stdout.splitlines()) == ["spent-1: replayed", "spent-2: replayed"]
    queued = {json.loads(raw)["headers"]["id"] for raw in redis.lrange("normal", 0, -1)}
    assert queued == {"spent-1", "spent-2"}
    left = {s.entry["job_id"] for s in deadletter.read(redis)}
    assert left == {"refused-1", "spent-old"}
    # And a batch filter combines with --all; a bad --since is refused, naming what it takes
    by_batch = emailq(session_redis.url, "dlq", "replay", "--all", "--batch", "batch-7")
    assert by_batch.returncode == 0 and "nothing to replay" in by_batch.stdout
    bad = emailq(session_redis.url, "dlq", "replay", "--reason", "permanent", "--since", "soon")
    assert bad.returncode == 2 and "neither an ISO date/time" in bad.stderr
    assert {s.entry["job_id"] for s in deadletter.read(redis)} == left
