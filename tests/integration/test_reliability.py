"""Broker-level guarantees: JSON only, and a killed worker's job comes back."""

import time

from emailq.producer import enqueue_email


def test_a_pickled_job_is_refused_by_the_worker_and_not_sent(smtp_server, start_worker):
    # Given a worker that accepts JSON only
    worker = start_worker(smtp_server)

    # When a job arrives pickled
    enqueue_email.apply_async(
        kwargs={"to": "ann@example.com", "subject": "x", "text": "y"}, serializer="pickle"
    )
    json_job = enqueue_email.delay(to="bob@example.com", subject="ok", text="fine")
    json_job.get(timeout=30)

    # Then it is refused without running, and the JSON job after it still goes out
    assert [m.rcpt_tos for m in smtp_server.messages] == [["bob@example.com"]]
    assert "untrusted content of type pickle" in worker.log()


def test_a_killed_workers_job_returns_after_the_visibility_timeout(
    smtp_server, start_worker, session_redis
):
    # Given a worker with a 2 s visibility timeout, stuck in the middle of a job
    smtp_server.handler.rcpt_delay_s = 60
    first = start_worker(smtp_server, concurrency=1, VISIBILITY_TIMEOUT_S="2")
    result = enqueue_email.delay(to="ann@example.com", subject="Invoice", text="attached")
    redis = session_redis.client()
    deadline = time.monotonic() + 20
    while redis.hlen("unacked") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert redis.hlen("unacked") == 1

    # When that worker is killed outright and another one starts
    first.kill()
    smtp_server.handler.rcpt_delay_s = 0
    start_worker(smtp_server, concurrency=1, VISIBILITY_TIMEOUT_S="2")

    # Then the job is restored and sent, once: within the 2 s timeout plus the
    # 5 s restore sweep, with room for a busy machine
    [received] = smtp_server.handler.wait_for(1, timeout=30)
    assert received.rcpt_tos == ["ann@example.com"]
    assert result.get(timeout=10)["accepted"] == ["ann@example.com"]
    deadline = time.monotonic() + 10  # the ack follows the result by a moment
    while redis.hlen("unacked") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert redis.hlen("unacked") == 0
