"""A queue item that is not a kombu message is quarantined; the worker goes on sending.

Anyone with access to Redis can push anything onto `high` or `normal`. kombu used to raise
out of its consumer on such an item (the worker stopped: "Unrecoverable error") or drop it
as a lost connection. ``emailq.core.backends`` moves it to ``emailq:quarantine`` instead.
"""

import hashlib
import inspect
import json
import time
from collections.abc import Callable

import pytest
from kombu import Connection, Producer, Queue
from kombu.transport import redis as kombu_redis

from emailq.core import backends
from emailq.core.keys import QUARANTINE
from emailq.producer import enqueue_email

# A kombu envelope in every respect but its body, which base64 cannot decode: kombu's own
# Message raises, after every shape check has passed.
_BAD_BODY = json.dumps({
    "body": "x",
    "content-encoding": "utf-8",
    "content-type": "application/json",
    "headers": {},
    "properties": {
        "delivery_tag": "bad-body-tag",
        "body_encoding": "base64",
        "delivery_info": {"exchange": "", "routing_key": "normal"},
    },
}).encode()  # fmt: skip

MALFORMED = {
    "not JSON": b"garbage",
    "a JSON list": b"[1,2]",
    "an object without delivery_tag": b'{"body": "x"}',
    "a JSON number": b"42",
    "invalid UTF-8": b"\xff\xfe{\x80 not utf-8",
    "an undecodable body": _BAD_BODY,
    "a large item": b"<" * 100_000,
}


def _eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true after {timeout}s: {check}")
        time.sleep(0.05)


def _quarantined(redis) -> list[dict]:  # noqa: ANN001 - a redis client
    """Records, oldest first (the backend pushes on the left)."""
    return [json.loads(raw) for raw in reversed(redis.lrange(QUARANTINE, 0, -1))]


def _malformed_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "malformed item" in line]


def test_malformed_items_between_jobs_are_quarantined_and_every_job_is_sent(
    smtp_server, start_worker, session_redis
):
    # Given a `normal` backlog where every malformed form sits between two valid jobs
    redis = session_redis.client()
    results = [enqueue_email.delay(to="first@example.com", subject="Job 0", text="x")]
    for i, raw in enumerate(MALFORMED.values(), start=1):
        redis.lpush("normal", raw)
        results.append(enqueue_email.delay(to=f"job{i}@example.com", subject=f"Job {i}", text="x"))
    started = time.time()

    # When a worker consumes it
    worker = start_worker(smtp_server)

    # Then every valid job is sent, in spite of the items between them
    for result in results:
        result.get(timeout=30)
    sent = smtp_server.handler.wait_for(len(results))
    assert sorted(m.rcpt_tos[0] for m in sent) == sorted(
        ["first@example.com"] + [f"job{i}@example.com" for i in range(1, len(MALFORMED) + 1)]
    )
    # and the worker is still running, with nothing left in the queue
    assert worker.process.poll() is None, worker.log()
    assert redis.llen("normal") == 0

    # and each malformed item is in the quarantine, in queue order, with its raw content
    records = _quarantined(redis)
    assert len(records) == len(MALFORMED), records
    for (form, raw), record in zip(MALFORMED.items(), records, strict=True):
        assert record["queue"] == "normal", form
        assert record["raw"] == raw[: backends.QUARANTINE_RAW_BYTES].decode("utf-8", "replace")
        assert record["size"] == len(raw), form
        assert record["error"], form
        assert started - 5 < record["at"] < time.time() + 5, form
    by_form = dict(zip(MALFORMED, records, strict=True))
    assert "JSON" in by_form["not JSON"]["error"]
    assert "list" in by_form["a JSON list"]["error"]
    assert "properties" in by_form["an object without delivery_tag"]["error"]
    assert len(by_form["a large item"]["raw"]) == backends.QUARANTINE_RAW_BYTES

    # and the log has one short ERROR line per item, naming the queue and the error
    log = worker.log()
    lines = _malformed_lines(log)
    assert len(lines) == len(MALFORMED), lines
    for line, record in zip(lines, records, strict=True):
        assert "ERROR" in line and "queue normal" in line and record["error"] in line
        assert len(line) < 500, line
    assert "<" * 200 not in log  # the large item itself stays out of the log
    assert "Unrecoverable error" not in log
    assert "Connection to broker lost" not in log

    # and kombu's QoS holds nothing for them: once the jobs' acks land, `unacked` is empty
    _eventually(lambda: redis.hlen("unacked") == 0)


def test_a_malformed_item_in_high_is_quarantined_while_the_worker_is_waiting(
    smtp_server, start_worker, session_redis
):
    # Given a worker idle in BRPOP on both queues
    redis = session_redis.client()
    worker = start_worker(smtp_server)

    # When a malformed item lands in `high`, followed by a high and a normal job
    redis.lpush("high", b"[]")
    high = enqueue_email.delay(to="oncall@example.com", subject="Down", text="!", priority="high")
    normal = enqueue_email.delay(to="ann@example.com", subject="Digest", text="x")

    # Then both jobs are sent, the worker runs on, and the item is in quarantine
    high.get(timeout=30)
    normal.get(timeout=30)
    assert sorted(m.rcpt_tos[0] for m in smtp_server.handler.wait_for(2)) == [
        "ann@example.com",
        "oncall@example.com",
    ]
    assert worker.process.poll() is None, worker.log()
    [record] = _quarantined(redis)
    assert record["queue"] == "high" and record["raw"] == "[]"
    [line] = _malformed_lines(worker.log())
    assert "ERROR" in line and "queue high" in line


def test_basic_get_quarantines_malformed_items_and_returns_the_next_message(session_redis):
    # Given `normal` holding two malformed items in front of one message (kombu's _get path)
    redis = session_redis.client()
    redis.lpush("normal", b"garbage", b'{"body": "x"}')
    queue = Queue("normal", routing_key="normal")
    with Connection(session_redis.url, transport=backends.Transport) as conn:
        channel = conn.channel()
        Producer(channel).publish(
            {"n": 1}, routing_key="normal", serializer="json", declare=[queue]
        )

        # When it is read with basic_get
        message = channel.basic_get("normal", no_ack=True)
        empty = channel.basic_get("normal", no_ack=True)

    # Then the message is returned, the queue is empty, and both items are in quarantine
    assert message is not None and message.decode() == {"n": 1}
    assert empty is None
    assert [r["raw"] for r in _quarantined(redis)] == ["garbage", '{"body": "x"}']


@pytest.mark.parametrize(
    ("method", "digest"),
    [
        (kombu_redis.Channel._brpop_read, "c42518699709f2df"),
        (kombu_redis.Channel._get, "be26a9f1eb4cf8da"),
    ],
)
def test_the_kombu_code_the_backend_mirrors_has_not_changed(method, digest):
    # core/backends.py re-implements these two kombu 5.7 methods around the decoding step.
    # A kombu release that changes them must be merged there too (e.g. the re-auth flush).
    source = inspect.getsource(method)
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == digest, (
        f"kombu's Channel.{method.__name__} changed: update the copy in core/backends.py, "
        "then this digest"
    )
