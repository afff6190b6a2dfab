"""The backlog, place by place: ``emailq queues`` and the figures Flower's /metrics serves."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emailq.core import delayed
from emailq.producer import enqueue_bulk, enqueue_email
from emailq.worker import counters, deadletter
from emailq.worker.app import app
from emailq.worker.metrics import Collector
from emailq.worker.queues import snapshot

EMAILQ = str(Path(sys.executable).with_name("emailq"))
WELCOME = {"product": "Acme", "verify_url": "https://acme.example/v", "valid_hours": 24}


def fill(redis) -> float:  # noqa: ANN001 - a redis client
    """Two normal jobs and a bulk chunk, one high, two delayed, a dead letter, one in flight."""
    started = time.time()
    enqueue_email.delay(to="a@example.com", subject="1", text="x")
    enqueue_email.delay(to="b@example.com", subject="2", text="x")
    enqueue_email.delay(to="c@example.com", subject="3", text="x", priority="high")
    enqueue_bulk("welcome", [{"to": "d@example.com", "context": {**WELCOME, "username": "d"}}])
    for n, due in enumerate((started - 30, started + 600)):
        delayed.park(redis, task_id=f"later-{n}", kwargs={}, queue="normal", due=due)
    deadletter.publish(
        app,
        {"job_id": "dead-1", "job": {"to": ["e@example.com"], "subject": "s"},
         "reason": "permanent", "attempts": [], "failed_recipients": {},
         "dead_at": started - 120},
    )  # fmt: skip
    # one job a worker took 5 s ago and has not acknowledged (kombu's unacked entries)
    redis.hset("unacked", "tag-1", '[{}, "", "high"]')
    redis.zadd("unacked_index", {"tag-1": started - 5})
    return started


def test_each_place_reports_its_depth_and_the_age_of_its_oldest_job(session_redis):
    # Given jobs in every place a job can wait
    redis = session_redis.client()
    started = fill(redis)
    time.sleep(0.2)

    # When the backlog is read
    places = {p.name: p for p in snapshot(redis)}

    # Then each place has its depth
    depths = {name: p.depth for name, p in places.items()}
    assert depths == {
        "high": 1, "normal": 3, "dead_letter": 1, "delayed": 2, "in_flight": 1
    }  # fmt: skip
    # and the age of its oldest job, from what the jobs carry
    elapsed = time.time() - started
    assert 0.2 <= places["normal"].oldest_age_s <= elapsed + 1
    assert places["high"].oldest_age_s <= elapsed + 1
    assert 120 <= places["dead_letter"].oldest_age_s <= 120 + elapsed + 1
    assert 30 <= places["delayed"].oldest_age_s <= 30 + elapsed + 1  # the overdue one
    assert 5 <= places["in_flight"].oldest_age_s <= 5 + elapsed + 1


def test_an_unreadable_item_counts_without_an_age(session_redis):
    redis = session_redis.client()
    redis.lpush("normal", b"garbage")

    [normal] = [p for p in snapshot(redis) if p.name == "normal"]

    assert (normal.depth, normal.oldest_age_s) == (1, None)


def test_emailq_queues_prints_the_table_and_json(session_redis):
    fill(session_redis.client())
    env = {**os.environ, "REDIS_URL": session_redis.url, "COLUMNS": "200"}

    table = subprocess.run([EMAILQ, "queues"], env=env, capture_output=True, text=True)
    as_json = subprocess.run([EMAILQ, "queues", "--json"], env=env, capture_output=True, text=True)

    assert table.returncode == 0, table.stderr
    for name in ("high", "normal", "dead_letter", "delayed", "in_flight"):
        assert name in table.stdout
    figures = json.loads(as_json.stdout)
    assert figures["normal"]["depth"] == 3 and figures["normal"]["oldest_age_s"] > 0


def test_emailq_queues_names_redis_when_it_is_away():
    from tests.support import free_port

    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    out = subprocess.run([EMAILQ, "queues"], env=env, capture_output=True, text=True, timeout=60)

    assert out.returncode == 1
    assert "cannot read the queues from Redis (REDIS_URL)" in out.stderr


def test_the_collector_exports_the_backlog_outcomes_and_relay_state(session_redis, settings):
    # Given a backlog, and outcomes counted by workers
    redis = session_redis.client()
    fill(redis)
    counters.count(redis, "sent")
    counters.count(redis, "sent")
    counters.count(redis, "dead", "exhausted")
    redis.hset("emailq:counters", "someone-else", 5)  # not ours: not exported

    # When Prometheus scrapes
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in Collector(settings, redis).collect()
        for s in family.samples
    }

    # Then the figures are there
    assert samples[("emailq_redis_up", ())] == 1
    assert samples[("emailq_queue_depth", (("queue", "normal"),))] == 3
    assert samples[("emailq_queue_depth", (("queue", "dead_letter"),))] == 1
    assert samples[("emailq_queue_oldest_age_seconds", (("queue", "dead_letter"),))] >= 120
    assert samples[("emailq_jobs_total", (("outcome", "sent"), ("reason", "")))] == 2
    assert samples[("emailq_jobs_total", (("outcome", "dead"), ("reason", "exhausted")))] == 1
    assert samples[("emailq_jobs_total", (("outcome", "retried"), ("reason", "")))] == 0
    assert not any("someone" in str(key) for key in samples)
    relay = f"{settings.smtp_server}:{settings.smtp_port}"
    closed = ("emailq_relay_circuit_state", (("relay", relay), ("state", "closed")))
    assert samples[closed] == 1


def test_the_collector_reports_redis_down_instead_of_failing_the_scrape(settings):
    import redis as redis_lib

    from tests.support import free_port

    client = redis_lib.Redis(port=free_port(), socket_connect_timeout=0.5)

    families = list(Collector(settings, client).collect())

    assert [(f.name, f.samples[0].value) for f in families] == [("emailq_redis_up", 0)]


@pytest.fixture
def settings():
    from emailq.config import load_settings

    return load_settings()


def test_workers_count_what_happens_to_jobs(session_redis, smtp_server, start_worker):
    # Given a worker, and a relay that refuses one recipient for good
    redis = session_redis.client()
    smtp_server.handler.rcpt_replies["nobody@example.com"] = "550 5.1.1 No such user"
    start_worker(smtp_server)

    # When one job is sent and another is refused
    enqueue_email.delay(to="ann@example.com", subject="ok", text="x").get(timeout=30)
    refused = enqueue_email.delay(to="nobody@example.com", subject="no", text="x")
    with pytest.raises(Exception):  # noqa: B017, PT011 - the task's failure, whatever its class
        refused.get(timeout=30)

    # Then the counters Flower exports say so
    deadline = time.monotonic() + 10
    while counters.read(redis).get(("dead", "permanent"), 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    totals = counters.read(redis)
    assert totals[("sent", "")] == 1
    assert totals[("dead", "permanent")] == 1
