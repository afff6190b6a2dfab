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


def test_a_results_text_in_its_event_is_its_repr_and_log_lines_stay_whole(
    smtp_server, start_worker, session_redis
):
    # Given a job one of whose recipients is refused with a two-line reply (smtplib joins
    # the lines with a newline, and the result keeps the reply)
    smtp_server.handler.rcpt_replies["gone@example.com"] = (
        "550-5.1.1 No such user\r\n550 5.1.1 Really"
    )
    listener = redis.Redis.from_url(session_redis.url).pubsub()
    listener.psubscribe("*celeryev/task*")
    assert listener.get_message(timeout=5)["type"] == "psubscribe"
    worker = start_worker(smtp_server, concurrency=2)

    # When it is sent to the other recipient
    result = enqueue_email.delay(
        to=["ok@example.com", "gone@example.com"], subject="two lines", text="x"
    )
    outcome = result.get(timeout=60)
    assert outcome["status"] == "partial"
    assert outcome["refused"]["gone@example.com"][1] == "5.1.1 No such user\n5.1.1 Really"
    worker.stop()

    # Then Flower's task-succeeded event carries the result's repr: the newline escaped
    succeeded = []
    while (message := listener.get_message(timeout=1.0)) is not None:
        if message["type"] == "pmessage":
            succeeded += [e for e in _events(message["data"]) if e["type"] == "task-succeeded"]
    [event] = [e for e in succeeded if e["uuid"] == result.id]
    assert event["result"] == repr(outcome)
    assert "\n" not in event["result"]
    # and the dead-letter line for the refused recipient keeps the reply on one line
    lines = worker.log().splitlines()
    assert any("dead-lettered" in line and "No such user\\n5.1.1 Really" in line for line in lines)
    assert not any(line.startswith("5.1.1 Really") for line in lines)
