"""Scheduling, idempotency, cooldowns and rate limits, with two real workers where it matters."""

import json
import multiprocessing
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from emailq.producer import InvalidBatch, enqueue_bulk, enqueue_email
from emailq.producer.notifications import InvalidToken, send_alert, send_verification, verify_token
from emailq.worker import deadletter
from emailq.worker.ledger import Ledger
from tests.support.faults import FAST_RETRIES

EMAILQ = str(Path(sys.executable).with_name("emailq"))
WELCOME = {"product": "Acme", "verify_url": "https://acme.example/v", "valid_hours": 24}


def test_a_countdown_longer_than_the_visibility_timeout_sends_once(smtp_server, start_worker):
    # Given two workers whose broker re-hands unacknowledged jobs after 2 s
    env = {"VISIBILITY_TIMEOUT_S": "2"}
    workers = [start_worker(smtp_server, **env), start_worker(smtp_server, **env)]

    # When a job is scheduled 5 s ahead, and another by eta
    later = enqueue_email.apply_async(
        kwargs={"to": "ann@example.com", "subject": "Later", "text": "x"}, countdown=5
    )
    at = enqueue_email.apply_async(
        kwargs={"to": "bob@example.com", "subject": "At", "text": "x"},
        eta=datetime.now(UTC) + timedelta(seconds=4),
    )

    # Then each is sent once, and neither before its time
    sent_after = time.time()
    assert later.get(timeout=60)["sent_at"] >= sent_after + 4
    assert at.get(timeout=60)["sent_at"] >= sent_after + 3
    time.sleep(2 + 5 + 2)  # visibility timeout, a restore sweep, margin
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == [
        "ann@example.com", "bob@example.com",
    ]  # fmt: skip
    for worker in workers:
        worker.stop()
        assert "skipping the duplicate" not in worker.log()


def test_an_expired_notification_is_dropped_and_the_drop_recorded(smtp_server, start_worker):
    worker = start_worker(smtp_server)

    stale = enqueue_email.apply_async(
        kwargs={"to": "ann@example.com", "subject": "Flash sale", "text": "x"},
        countdown=2, expires=1,
    )  # fmt: skip
    fresh = enqueue_email.delay(to="bob@example.com", subject="Other", text="x")
    fresh.get(timeout=30)

    deadline = time.monotonic() + 30
    while "expired before it could be sent" not in worker.log():
        assert time.monotonic() < deadline, worker.log()[-2000:]
        time.sleep(0.2)
    assert [m.rcpt_tos for m in smtp_server.messages] == [["bob@example.com"]]
    worker.stop()
    status = subprocess.run(
        [EMAILQ, "status", stale.id, "--json"], capture_output=True, text=True, env=os.environ
    )
    job = json.loads(status.stdout)
    assert job["status"] == "dead" and job["last_error"] == "expired"


def test_the_same_idempotency_key_twice_sends_once(smtp_server, start_worker):
    start_worker(smtp_server)
    start_worker(smtp_server)
    kwargs = {"to": "ann@example.com", "subject": "Receipt", "text": "x"}

    first = enqueue_email.delay(**kwargs, idempotency_key="order-42-receipt")
    second = enqueue_email.delay(**kwargs, idempotency_key="order-42-receipt")
    other = enqueue_email.delay(**kwargs, idempotency_key="order-43-receipt")

    assert second.id == first.id and other.id != first.id
    first.get(timeout=30)
    other.get(timeout=30)
    time.sleep(1)
    assert len(smtp_server.messages) == 2


def _alert_from_another_process(_: int) -> bool:
    return send_alert("Disk usage", "web-1", "97%", "90%", to="ops@example.com") is not None


def test_an_alert_inside_its_cooldown_is_sent_once_across_processes(smtp_server, start_worker):
    start_worker(smtp_server)
    start_worker(smtp_server)

    with multiprocessing.get_context("spawn").Pool(4) as pool:
        enqueued = pool.map(_alert_from_another_process, range(8))

    assert enqueued.count(True) == 1
    [received] = smtp_server.handler.wait_for(1)
    assert received.message["Subject"] == "[CRITICAL] Disk usage on web-1: 97%"
    time.sleep(1)
    assert len(smtp_server.messages) == 1
    assert send_alert("Disk usage", "web-2", "95%", "90%", to="ops@example.com") is not None


def test_a_rate_limit_defers_jobs_and_never_drops_them(smtp_server, start_worker, session_redis):
    # Given two workers sharing a limit of 4 recipients per 2 seconds for the account
    env = {"SMTP_RATE_LIMIT": "4 per 2 seconds", **FAST_RETRIES}
    workers = [start_worker(smtp_server, **env), start_worker(smtp_server, **env)]

    # When 12 jobs arrive at once
    started = time.monotonic()
    results = [
        enqueue_email.delay(to=f"u{i}@example.com", subject="s", text="x") for i in range(12)
    ]

    # Then all 12 are delivered, no faster than the limit allows, none as a failure
    for result in results:
        assert result.get(timeout=90)["accepted"]
    assert time.monotonic() - started >= 4  # 12 at 4 per 2 s needs at least two more windows
    assert deadletter.read(session_redis.client()) == []
    ledger = Ledger(session_redis.client())
    assert all(len(ledger.state(r.id).attempts) == 1 for r in results)  # deferral is no attempt
    for worker in workers:
        worker.stop()
    assert any("SMTP_RATE_LIMIT reached" in w.log() for w in workers)


def test_bulk_send_personalises_every_message_and_reports_progress(smtp_server, start_worker):
    start_worker(smtp_server, concurrency=4)
    recipients = [
        {"to": f"user{i}@example.com", "context": {**WELCOME, "username": f"User {i}"}}
        for i in range(30)
    ]

    batch_id = enqueue_bulk(template="welcome", recipients=recipients, priority="normal")

    received = smtp_server.handler.wait_for(30, timeout=60)
    greeting = {m.rcpt_tos[0]: m.message.get_body(("plain",)).get_content() for m in received}
    assert "Hello User 7," in greeting["user7@example.com"]
    deadline = time.monotonic() + 20
    while True:
        out = subprocess.run([EMAILQ, "batch", batch_id, "--json"], capture_output=True, text=True)
        progress = json.loads(out.stdout)
        if progress["done"] == 30 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert progress["total"] == 30 and progress["by_status"]["sent"] == 30


def test_bulk_refuses_the_whole_batch_for_one_invalid_recipient_unless_told_to_skip(
    session_redis,
):
    redis = session_redis.client()
    recipients = [
        {"to": "ann@example.com", "context": {**WELCOME, "username": "Ann"}},
        {"to": "not-an-address", "context": {**WELCOME, "username": "X"}},
        {"to": "bob@example.com", "context": {"username": "Bob"}},  # missing variables
    ]

    with pytest.raises(InvalidBatch) as refused:
        enqueue_bulk(template="welcome", recipients=recipients)
    assert sorted(refused.value.invalid) == [1, 2]
    assert redis.llen("normal") == 0

    batch = enqueue_bulk(template="welcome", recipients=recipients, skip_invalid=True)
    assert sorted(batch.skipped) == [1, 2] and len(batch.job_ids) == 1
    assert redis.llen("normal") == 1


def test_a_verification_link_round_trips_and_rejects_forgery(smtp_server, start_worker):
    start_worker(smtp_server)

    send_verification("ann@example.com", "Ann", "https://acme.example/verify", product="Acme")

    [received] = smtp_server.handler.wait_for(1)
    text = received.message.get_body(("plain",)).get_content()
    token = re.search(r"token=([\w.\-]+)", text).group(1)
    assert verify_token(token) == "ann@example.com"
    with pytest.raises(InvalidToken):
        verify_token(token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1])
    time.sleep(1.1)
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(token, max_age=0)
