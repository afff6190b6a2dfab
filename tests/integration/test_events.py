"""Task events for Flower leave a worker in timed batches, and none is lost, at shutdown too."""

import base64
import json

import redis

from emailq.producer import enqueue_email


def _events(raw: bytes) -> list[dict]:
    envelope = json.loads(raw)
    body = envelope["body"]
    if envelope["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    decoded = json.loads(body)
    return decoded if isinstance(decoded, list) else [decoded]


def test_task_events_are_published_in_batches_and_all_arrive(
    smtp_server, start_worker, session_redis
):
    listener = redis.Redis.from_url(session_redis.url).pubsub()
    listener.psubscribe("*celeryev/task*")
    assert listener.get_message(timeout=5)["type"] == "psubscribe"
    worker = start_worker(smtp_server, concurrency=4)

    # When 60 jobs go out and the worker then stops (warm shutdown)
    results = [enqueue_email.delay(to=f"u{i}@example.com", subject=f"{i}", text="x")
               for i in range(60)]  # fmt: skip
    for result in results:
        result.get(timeout=60)
    worker.stop()

    publishes, events = 0, []
    while (message := listener.get_message(timeout=1.0)) is not None:
        if message["type"] == "pmessage":
            publishes += 1
            events += _events(message["data"])

    # Then every job's events arrived, the last ones too
    ids = {result.id for result in results}
    for kind in ("task-received", "task-started", "task-succeeded"):
        assert {e["uuid"] for e in events if e["type"] == kind} == ids, kind
    # in batches: several events per publish, not one publish per turn of the event loop
    assert publishes * 4 <= len(events)
