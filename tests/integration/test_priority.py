"""Strict priority: `high` jobs overtake a backlog of thousands of `normal` jobs."""

import time

import pytest

from emailq.producer import enqueue_email

BACKLOG = 3000


def _fill_backlog(count: int) -> None:
    for i in range(count):
        enqueue_email.delay(to=f"bulk{i}@example.com", subject="Weekly digest", text="news")


@pytest.mark.slow
def test_high_jobs_enqueued_during_a_backlog_are_sent_before_any_further_normal_job(
    smtp_server, start_worker, session_redis
):
    # Given thousands of normal jobs queued and a worker busy draining them
    _fill_backlog(BACKLOG)
    smtp_server.handler.data_delay_s = 0.005
    start_worker(smtp_server, concurrency=2)
    smtp_server.handler.wait_for(50)

    # When twenty high-priority alerts are enqueued
    alerts = [
        enqueue_email.delay(
            to=f"oncall{i}@example.com", subject="Disk full", text="!", priority="high"
        )
        for i in range(20)
    ]
    last_enqueued = time.monotonic()
    for alert in alerts:
        alert.get(timeout=60)

    # Then every alert is delivered while the backlog is still there, and the only
    # normal jobs sent meanwhile are the ones already in the worker's hands
    # (prefetch 1 x 2 threads). Round-robin would interleave one normal per alert.
    messages = list(smtp_server.messages)
    alert_times = [m.at for m in messages if m.rcpt_tos[0].startswith("oncall")]
    assert len(alert_times) == 20
    overtaken = [
        m for m in messages
        if m.rcpt_tos[0].startswith("bulk") and last_enqueued < m.at < max(alert_times)
    ]  # fmt: skip
    assert len(overtaken) <= 2, f"{len(overtaken)} normal jobs went out between the alerts"
    assert session_redis.client().llen("normal") > BACKLOG // 2


@pytest.mark.slow
def test_a_high_job_queued_behind_a_backlog_is_among_the_first_sent(smtp_server, start_worker):
    # Given thousands of normal jobs queued before a single high job, and no worker yet
    _fill_backlog(BACKLOG)
    alert = enqueue_email.delay(to="oncall@example.com", subject="Down", text="!", priority="high")

    # When a worker with two threads starts
    start_worker(smtp_server, concurrency=2)
    alert.get(timeout=60)

    # Then the high job is one of the first two messages sent
    first = [m.rcpt_tos[0] for m in smtp_server.handler.wait_for(2)[:2]]
    assert "oncall@example.com" in first
