"""The producer against a real Redis: bad input publishes nothing; good input lands on its queue."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from celery.result import AsyncResult

from emailq.producer import InvalidEmail, enqueue_email

GOOD = {"to": "ann@example.com", "subject": "Hello", "text": "body"}

REFUSED = {
    "malformed address": {"to": "ann@@example.com"},
    "LF in address": {"to": "ann@example.com\nBcc: victim@example.com"},
    "CR in subject": {"subject": "Hi\rBcc: victim@example.com"},
    "LF in subject": {"subject": "Hi\nBcc: victim@example.com"},
    "NUL in subject": {"subject": "Hi\0there"},
    "LF in cc": {"cc": ["x@example.com\n"]},
    "CR in bcc": {"bcc": "x@example.com\rFoo: bar"},
    "LF in reply_to": {"reply_to": "r@example.com\nX: y"},
    "LF in header value": {"headers": {"X-Ticket": "42\nBcc: victim@example.com"}},
    "CR in attachment filename": {"attachments": [{"filename": "a\r.txt", "content": b"x"}]},
    "reserved header": {"headers": {"Bcc": "victim@example.com"}},
    "no body": {"text": None},
    "unknown priority": {"priority": "urgent"},
    "unknown keyword": {"recipient": "ann@example.com"},
    "attachment over the limit": {
        "attachments": [{"filename": "big.bin", "content": b"\0" * (20 * 1024 * 1024 + 1)}]
    },
}


def _queued(redis) -> int:
    return redis.llen("high") + redis.llen("normal")


@pytest.mark.parametrize("change", REFUSED.values(), ids=REFUSED.keys())
def test_bad_input_is_refused_before_anything_is_published(change, session_redis):
    redis = session_redis.client()
    kwargs = {**GOOD, **change}

    with pytest.raises(InvalidEmail) as refused:
        enqueue_email.delay(**kwargs)

    assert isinstance(refused.value, ValueError)
    assert redis.dbsize() == 0  # not a queue entry, not a result key: nothing at all


def test_positional_arguments_are_refused(session_redis):
    with pytest.raises(InvalidEmail, match="keyword"):
        enqueue_email.delay("ann@example.com", "Hello", "body")
    assert _queued(session_redis.client()) == 0


def test_priority_picks_the_queue_and_the_payload_is_plain_json(session_redis):
    redis = session_redis.client()

    high = enqueue_email.delay(**GOOD, priority="high")
    normal = enqueue_email.apply_async(kwargs=GOOD)

    assert isinstance(high, AsyncResult) and isinstance(normal, AsyncResult)
    [high_raw] = redis.lrange("high", 0, -1)
    [normal_raw] = redis.lrange("normal", 0, -1)
    assert json.loads(high_raw)["headers"]["id"] == high.id
    assert json.loads(normal_raw)["headers"]["id"] == normal.id
    assert json.loads(normal_raw)["content-type"] == "application/json"


def test_apply_async_countdown_and_eta_are_celery_options(smtp_server, start_worker):
    start_worker(smtp_server)
    soon = datetime.now(UTC) + timedelta(seconds=1)

    later = enqueue_email.apply_async(kwargs=GOOD, countdown=1)
    at = enqueue_email.apply_async(kwargs={**GOOD, "to": "bob@example.com"}, eta=soon)

    assert later.get(timeout=30)["accepted"] == ["ann@example.com"]
    assert at.get(timeout=30)["accepted"] == ["bob@example.com"]
    assert len(smtp_server.handler.wait_for(2)) == 2
