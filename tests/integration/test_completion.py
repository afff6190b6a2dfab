"""A sent job's record, result and acknowledgement are one Redis script (emailq.worker.completion).

Checked on a real worker (the result reaches ``get()``, nothing stays in kombu's unacked
set), on the script itself (all three writes, or, when Redis is away, none of the two
extra ones later), and on the lean per-thread script call the ledger uses.
"""

import json
import shutil
import threading
import time

import pytest
import redis
from celery import Celery

from emailq.core.keys import JOB
from emailq.core.store import ThreadScript
from emailq.worker.ledger import Also, Ledger
from tests.support.redis import RedisServer

pytestmark = pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")

JOBS = 40


@pytest.fixture
def private_redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


def _publish(url: str, prefix: str, count: int) -> list:
    """``count`` jobs published to the Redis at ``url``, with results kept there."""
    publisher = Celery(broker=url, set_as_current=False)
    publisher.conf.task_serializer = "json"
    publisher.conf.result_backend = url
    return [
        publisher.send_task(
            "emailq.send",
            kwargs={"to": [f"{prefix}{i}@example.com"], "subject": "s", "text": "t"},
            queue="normal",
        )  # fmt: skip
        for i in range(count)
    ]


def _wait_until_nothing_unacked(client: redis.Redis) -> None:
    deadline = time.monotonic() + 10
    while client.hlen("unacked") or client.zcard("unacked_index"):
        assert time.monotonic() < deadline, client.hkeys("unacked")
        time.sleep(0.1)


def test_sent_jobs_leave_results_for_get_and_nothing_unacknowledged(
    smtp_server, private_redis, start_worker
):
    # Given jobs queued on a Redis of their own, and a caller already waiting on the first
    results = _publish(private_redis.url, "u", JOBS)
    waited: dict = {}
    waiter = threading.Thread(target=lambda: waited.update(results[0].get(timeout=60)))
    waiter.start()
    time.sleep(0.5)  # the waiter has subscribed: the result comes by PUBLISH

    # When a worker sends them
    start_worker(smtp_server, redis_url=private_redis.url, concurrency=4)
    smtp_server.handler.wait_for(JOBS, timeout=60)
    waiter.join(60)

    # Then every result says sent, the waiting caller got its own, and no job is left
    # for the visibility timeout to give back
    assert waited["status"] == "sent" and waited["accepted"] == ["u0@example.com"]
    for i, result in enumerate(results):
        assert result.get(timeout=30)["accepted"] == [f"u{i}@example.com"]
    _wait_until_nothing_unacked(private_redis.client())
    assert len(smtp_server.handler.messages) == JOBS


def test_a_process_pool_leaves_the_ack_to_the_parent_and_keeps_nothing(
    smtp_server, private_redis, start_worker
):
    # Given a worker whose tasks run in child processes (the consumer acks in the parent)
    results = _publish(private_redis.url, "p", 10)

    # When it sends them
    start_worker(smtp_server, redis_url=private_redis.url, concurrency=2, pool="processes")

    # Then each result arrives and every job leaves the unacked set
    for i, result in enumerate(results):
        assert result.get(timeout=60)["accepted"] == [f"p{i}@example.com"]
    _wait_until_nothing_unacked(private_redis.client())


def _ready(client: redis.Redis, tag: str) -> None:
    client.hset("unacked", tag, '[{}, "", "normal"]')
    client.zadd("unacked_index", {tag: time.time()})


def test_the_record_script_stores_the_result_and_acks_with_the_outcome(private_redis):
    client = private_redis.client()
    ledger = Ledger(client)
    token, state = ledger.begin("job-1", lock_ttl_s=60)
    _ready(client, "tag-1")
    result_key = "celery-task-meta-job-1"
    pubsub = client.pubsub()
    pubsub.subscribe(result_key)
    pubsub.get_message(timeout=1)  # the subscription's confirmation
    value = json.dumps({"status": "SUCCESS", "result": {"status": "sent"}, "task_id": "job-1"})

    ledger.record(
        "job-1", state, delivered=["ann@example.com"], final="sent", token=token, count="sent",
        attempt={"outcome": "sent"},
        also=Also((result_key, "unacked_index", "unacked"), (value, 3600, "tag-1")),
    )  # fmt: skip

    assert client.get(result_key).decode() == value
    assert 3500 < client.ttl(result_key) <= 3600
    assert pubsub.get_message(timeout=5)["data"].decode() == value
    assert not client.hexists("unacked", "tag-1")
    assert client.zscore("unacked_index", "tag-1") is None
    assert client.hget(JOB + "job-1", "final") == b"sent"
    assert not client.exists(JOB + "job-1:lock")


def test_an_outcome_kept_while_redis_was_away_is_written_without_result_or_ack(tmp_path):
    server = RedisServer(tmp_path / "redis", fsync="always").start()
    try:
        client = server.client()
        ledger = Ledger(client)
        token, state = ledger.begin("job-2", lock_ttl_s=60)
        _ready(client, "tag-2")
        server.kill()
        also = Also(("celery-task-meta-job-2", "unacked_index", "unacked"), ("{}", "", "tag-2"))

        with pytest.raises(redis.RedisError):
            ledger.record("job-2", state, delivered=["b@example.com"], final="sent",
                          token=token, also=also)  # fmt: skip
        assert ledger.unwritten() == ["job-2"]

        server.start()  # from its append-only file: the job is still unacknowledged
        ledger.flush()

        # The outcome is written; the job's result and ack are left to Celery's own path
        assert client.hget(JOB + "job-2", "final") == b"sent"
        assert not client.exists("celery-task-meta-job-2")
        assert client.hexists("unacked", "tag-2")
    finally:
        server.kill()


def test_a_thread_script_rides_out_a_flushed_cache_and_a_restarted_redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        script = ThreadScript(server.client(), "return redis.call('incr', KEYS[1])")
        assert script(keys=["n"]) == 1

        server.client().script_flush()
        assert script(keys=["n"]) == 2  # EVAL when Redis no longer knows the script

        server.stop()
        server.start()  # same port, no data: the thread's idle connection is dead
        assert script(keys=["n"]) == 1

        server.kill()
        with pytest.raises(redis.ConnectionError):
            script(keys=["n"])
    finally:
        server.kill()


def test_a_script_error_reaches_the_caller_and_the_next_call_works(private_redis):
    client = private_redis.client()
    client.set("text", "x")
    script = ThreadScript(client, "return redis.call('incr', KEYS[1])")

    with pytest.raises(redis.ResponseError):
        script(keys=["text"])
    assert script(keys=["counter"]) == 1
