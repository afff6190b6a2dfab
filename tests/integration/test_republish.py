"""Re-publication on the worker side sends the stored payload as it is: no producer
validation, no file read because a payload names one, no idempotency key claimed again."""

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from emailq.core.keys import DELAYED, IDEMPOTENCY
from emailq.producer import enqueue_email
from emailq.worker.app import app
from tests.support.faults import FAST_RETRIES, dead_letters

EMAILQ = str(Path(sys.executable).with_name("emailq"))


def test_a_parked_entry_naming_a_file_is_dead_lettered_and_the_file_never_read(
    smtp_server, start_worker, session_redis, tmp_path
):
    # Given a secret on the worker's disk, and a parked job (written straight into Redis)
    # whose attachment is that file's path
    secret = tmp_path / "environ"
    secret.write_text("EMAIL_PASSWORD=hunter2-never-mailed")
    start_worker(smtp_server, **FAST_RETRIES)
    kwargs = {"to": ["ann@example.com"], "subject": "s", "text": "t", "attachments": [str(secret)]}
    entry = {"task_id": "poisoned", "kwargs": kwargs, "queue": "normal"}
    session_redis.client().zadd(DELAYED, {json.dumps(entry): time.time() - 1})

    # Then the mover publishes it, and the worker refuses it as invalid, sending nothing
    [dead] = dead_letters(session_redis.client())
    assert (dead["job_id"], dead["reason"]) == ("poisoned", "invalid")
    assert smtp_server.messages == []
    assert "hunter2" not in json.dumps(dead)


def test_a_payload_published_through_the_workers_app_naming_a_file_reads_nothing(
    smtp_server, start_worker, session_redis, tmp_path
):
    # Flower's "apply task" publishes through the worker's app, not the producer
    secret = tmp_path / "environ"
    secret.write_text("EMAIL_PASSWORD=hunter2-never-mailed")
    start_worker(smtp_server, **FAST_RETRIES)

    app.tasks["emailq.send"].apply_async(
        kwargs={"to": ["ann@example.com"], "subject": "s", "text": "t",
                "attachments": [str(secret)]},
    )  # fmt: skip

    [dead] = dead_letters(session_redis.client())
    assert dead["reason"] == "invalid" and "hunter2" not in json.dumps(dead)
    assert smtp_server.messages == []


def test_a_replay_sends_the_dead_job_even_after_its_idempotency_key_moved_on(
    smtp_server, start_worker, session_redis
):
    # Given a job with an idempotency key, dead-lettered after a permanent refusal
    start_worker(smtp_server, **FAST_RETRIES)
    smtp_server.handler.rcpt_replies["ann@example.com"] = ["550 5.1.1 No such user"]
    result = enqueue_email.delay(
        to="ann@example.com", subject="Receipt", text="x", idempotency_key="order-42-receipt"
    )
    dead_letters(session_redis.client())
    # ...and the key now owned by another job (the window passed and it was used again)
    session_redis.client().set(IDEMPOTENCY + "order-42-receipt", "another-job")

    # When it is replayed
    env = {**os.environ, "REDIS_URL": session_redis.url}
    replayed = subprocess.run(
        [EMAILQ, "dlq", "replay", result.id], env=env, capture_output=True, text=True, timeout=60
    )

    # Then the replay sends this job as it is: the key is not claimed a second time
    assert replayed.returncode == 0, replayed.stderr
    assert smtp_server.handler.wait_for(1)[0].message["Subject"] == "Receipt"
    assert session_redis.client().get(IDEMPOTENCY + "order-42-receipt") == b"another-job"


def test_a_job_older_than_max_job_age_is_dead_lettered_as_expired_not_sent(
    smtp_server, start_worker, session_redis
):
    start_worker(smtp_server, MAX_JOB_AGE_S="60", **FAST_RETRIES)
    old = {"to": ["ann@example.com"], "subject": "s", "text": "t", "queued_at": time.time() - 61}
    fresh = {**old, "to": ["bob@example.com"], "queued_at": time.time()}

    app.tasks["emailq.send"].apply_async(kwargs=old, task_id="old-job")
    app.tasks["emailq.send"].apply_async(kwargs=fresh, task_id="fresh-job")

    [dead] = dead_letters(session_redis.client())
    assert (dead["job_id"], dead["reason"]) == ("old-job", "expired")
    assert [m.rcpt_tos for m in smtp_server.handler.wait_for(1)] == [["bob@example.com"]]


def test_the_producer_stamps_when_a_job_was_first_queued(session_redis):
    before = time.time()
    enqueue_email.delay(to="ann@example.com", subject="s", text="t")

    [raw] = session_redis.client().lrange("normal", 0, -1)
    body = json.loads(raw)["body"]
    queued_at = json.loads(base64.b64decode(body))[1]["queued_at"]
    assert before <= queued_at <= time.time()
