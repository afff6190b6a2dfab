"""Delivery tracking from real runs, on SQLite and on the PostgreSQL server of this machine."""

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import text

from emailq.producer import enqueue_email
from emailq.worker.tracking import engine_for, ensure_schema
from tests.support.faults import FAST_RETRIES, dead_letters

EMAILQ = str(Path(sys.executable).with_name("emailq"))


def emailq(env_url: str, redis_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": env_url, "REDIS_URL": redis_url, "COLUMNS": "200"}
    return subprocess.run([EMAILQ, *args], env=env, capture_output=True, text=True, timeout=60)


def _wait_status(database_url, redis_url, job_id, wanted, timeout=30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        out = emailq(database_url, redis_url, "status", job_id, "--json")
        if out.returncode == 0:
            job = json.loads(out.stdout)
            if job["status"] == wanted and job.get("recipients"):
                return job
        if time.monotonic() > deadline:
            raise AssertionError(f"{job_id} not {wanted}: {out.stdout} {out.stderr}")
        time.sleep(0.3)


def test_status_stats_and_failed_tell_the_truth_about_a_real_run(
    database_url, smtp_server, start_worker, session_redis
):
    # Given a worker tracking into the database, and one job of each fate
    start_worker(smtp_server, DATABASE_URL=database_url, **FAST_RETRIES)
    handler = smtp_server.handler
    handler.rcpt_replies["retry@example.com"] = ["451 4.3.0 Later"] * 2
    handler.rcpt_replies["gone@example.com"] = "550 5.1.1 No such user"
    sent = enqueue_email.delay(to="ann@example.com", subject="Plain", text="x", priority="high")
    retried = enqueue_email.delay(to="retry@example.com", subject="Retried", text="x")
    dead = enqueue_email.delay(to="gone@example.com", subject="Dead", text="x")
    sent.get(timeout=30)
    retried.get(timeout=60)
    dead_letters(session_redis.client())
    url = session_redis.url

    # Then status reports each job as it ended, with its attempts
    job = _wait_status(database_url, url, sent.id, "sent")
    assert job["recipients"] == ["ann@example.com"] and job["priority"] == "high"
    assert job["subject"] == "Plain" and job["attempts"] == 1 and job["sent_at"]
    assert [a["outcome"] for a in job["history"]] == ["sent"]
    job = _wait_status(database_url, url, retried.id, "sent")
    assert [a["outcome"] for a in job["history"]] == ["transient", "transient", "sent"]
    assert [a["smtp_code"] for a in job["history"]] == [451, 451, 250]
    job = _wait_status(database_url, url, dead.id, "dead")
    assert "550" in job["last_error"] or "refused" in job["last_error"]
    assert job["history"][0]["smtp_code"] == 550

    # And stats and failed agree
    stats = json.loads(emailq(database_url, url, "stats", "--days", "1", "--json").stdout)
    assert stats["total"] == 3
    assert stats["by_status"]["sent"] == {"count": 2, "percent": 66.7}
    assert stats["by_status"]["dead"] == {"count": 1, "percent": 33.3}
    failed = emailq(database_url, url, "failed", "--limit", "5")
    assert failed.returncode == 0 and dead.id in failed.stdout and sent.id not in failed.stdout
    table = emailq(database_url, url, "status", sent.id)
    assert "sent" in table.stdout and "ann@example.com" in table.stdout


def test_a_job_not_yet_taken_by_a_worker_is_queued(session_redis):
    # Given a job whose "queued" record still waits in Redis: no worker has stored it
    result = enqueue_email.delay(to="ann@example.com", subject="Later", text="x")

    job = json.loads(
        emailq(os.environ["DATABASE_URL"], session_redis.url, "status", result.id, "--json").stdout
    )

    assert job["status"] == "queued" and job["attempts"] == 0


def test_an_unknown_job_is_reported_as_such(session_redis):
    out = emailq(os.environ["DATABASE_URL"], session_redis.url, "status", "no-such-job")
    assert out.returncode == 1 and "unknown job" in out.stderr


def test_delivery_goes_on_while_the_tracking_database_is_down(smtp_server, start_worker):
    # A PostgreSQL URL on a port where nothing listens
    start_worker(smtp_server, DATABASE_URL="postgresql://postgres@127.0.0.1:9/none")

    result = enqueue_email.delay(to="ann@example.com", subject="Still sent", text="x")

    assert result.get(timeout=30)["accepted"] == ["ann@example.com"]


def _create_schema(url: str) -> None:
    ensure_schema(engine_for(url))


def test_schema_creation_is_safe_when_processes_start_together(database_url):
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        pool.map(_create_schema, [database_url] * 6)

    engine = engine_for(database_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM emailq_jobs")).scalar() == 0


def test_sqlite_store_runs_in_wal_mode(tmp_path):
    engine = engine_for(f"sqlite:///{tmp_path / 'var' / 'tracking.sqlite3'}")
    ensure_schema(engine)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_two_worker_processes_share_one_sqlite_store(smtp_server, start_worker, tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    start_worker(smtp_server, DATABASE_URL=url)
    start_worker(smtp_server, DATABASE_URL=url)

    results = [
        enqueue_email.delay(to=f"u{i}@example.com", subject="s", text="x") for i in range(40)
    ]
    for r in results:
        r.get(timeout=60)

    engine = engine_for(url)
    ensure_schema(engine)  # the workers may not have flushed yet
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            sent = conn.execute(
                text("SELECT count(*) FROM emailq_jobs WHERE status = 'sent'")
            ).scalar()
        if sent == 40:
            break
        time.sleep(0.3)
    assert sent == 40
