"""Bulk sends travel as chunks of jobs; each job still settles on its own.

A chunk is one task carrying up to ``worker.CHUNK_SIZE`` jobs. These tests prove that
a refusal, a deferral or a killed worker inside a chunk touches only the job it
concerns: the others are sent once, and the failing one retries or dead-letters
exactly as a single job would.
"""

import asyncio
import time

from emailq.core.job import CHUNK_SIZE
from emailq.producer import enqueue_bulk
from emailq.worker.ledger import Ledger
from tests.support.faults import FAST_RETRIES, dead_letters

WELCOME = {"product": "Acme", "verify_url": "https://acme.example/v", "valid_hours": 24}


def _recipients(addresses):
    return [{"to": a, "context": {**WELCOME, "username": a.split("@")[0]}} for a in addresses]


def test_a_bulk_send_is_published_as_chunks_that_keep_every_job_id(session_redis):
    redis = session_redis.client()
    addresses = [f"user{i}@example.com" for i in range(CHUNK_SIZE * 2 + 3)]

    batch = enqueue_bulk(template="welcome", recipients=_recipients(addresses))

    assert redis.llen("normal") == 3  # three task messages, not 53
    assert len(batch.job_ids) == len(set(batch.job_ids)) == len(addresses)


def test_one_refused_and_one_deferred_recipient_leave_the_rest_of_the_chunk_alone(
    smtp_server, start_worker, session_redis
):
    # Given a chunk in which one address is refused for good and one is busy twice
    handler = smtp_server.handler
    handler.rcpt_replies["gone@example.com"] = "550 5.1.1 No such user"
    handler.rcpt_replies["busy@example.com"] = ["451 4.2.0 Try later"] * 2
    addresses = ["ann@example.com", "gone@example.com", "busy@example.com", "bob@example.com"]
    start_worker(smtp_server, concurrency=2, **FAST_RETRIES)

    batch = enqueue_bulk(template="welcome", recipients=_recipients(addresses))

    # Then the refused one is dead-lettered alone, under its own job id
    [entry] = dead_letters(session_redis.client())
    gone_id = batch.job_ids[1]
    assert entry["job_id"] == gone_id and entry["reason"] == "permanent"
    assert entry["failed_recipients"] == {"gone@example.com": [550, "5.1.1 No such user"]}
    # And every other address gets its message exactly once, the busy one on its third try
    received = handler.wait_for(3, timeout=60)
    assert sorted(m.rcpt_tos[0] for m in received) == [
        "ann@example.com", "bob@example.com", "busy@example.com",
    ]  # fmt: skip
    assert len(handler.attempts("busy@example.com")) == 3
    for address in ("ann@example.com", "bob@example.com"):
        assert len(handler.attempts(address)) == 1
    job_of = dict(zip(addresses, batch.job_ids, strict=True))
    for m in received:
        assert m.message["Message-ID"].startswith(f"<{job_of[m.rcpt_tos[0]]}@")
    time.sleep(1)
    assert len(handler.messages) == 3  # nothing sent twice


def test_a_chunk_whose_worker_is_killed_midway_resumes_without_resending(
    smtp_server, start_worker, session_redis
):
    # Given a chunk of five, whose worker is killed while the third address's RCPT hangs
    handler = smtp_server.handler
    hung: list[str] = []
    plain_rcpt = handler.handle_RCPT

    async def hang_once_on_c(server, session, envelope, address, rcpt_options):
        if address == "c@example.com" and not hung:
            hung.append(address)
            await asyncio.sleep(60)
        return await plain_rcpt(server, session, envelope, address, rcpt_options)

    handler.handle_RCPT = hang_once_on_c
    addresses = [f"{x}@example.com" for x in "abcde"]
    first = start_worker(smtp_server, concurrency=1, VISIBILITY_TIMEOUT_S="2")
    batch = enqueue_bulk(template="welcome", recipients=_recipients(addresses))
    deadline = time.monotonic() + 30
    while not hung and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hung and len(handler.messages) == 2
    # The second job's reply is read after the third's envelope went out with its data.
    while Ledger(session_redis.client()).state(batch.job_ids[1]).final is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.kill()
    # The dead worker's lock on that job would expire after lock_ttl_s; clear it now.
    session_redis.client().delete(f"emailq:job:{batch.job_ids[2]}:lock")

    # When another worker takes the chunk back
    start_worker(smtp_server, concurrency=1, VISIBILITY_TIMEOUT_S="2")

    # Then every address has its message once: the first two are not sent again
    received = handler.wait_for(5, timeout=60)
    assert sorted(m.rcpt_tos[0] for m in received) == addresses
    ledger = Ledger(session_redis.client())
    assert all(ledger.state(job_id).final == "sent" for job_id in batch.job_ids)
    time.sleep(1)
    assert len(handler.messages) == 5


def test_a_bulk_chunk_steps_aside_for_an_alert_and_finishes_afterwards(smtp_server, start_worker):
    # Given one worker thread busy with a chunk of 25 slow sends
    from emailq.producer import enqueue_email

    handler = smtp_server.handler
    handler.rcpt_delay_s = 0.1
    start_worker(smtp_server, concurrency=1)
    addresses = [f"bulk{i}@example.com" for i in range(CHUNK_SIZE)]
    enqueue_bulk(template="welcome", recipients=_recipients(addresses))
    handler.wait_for(2, timeout=30)

    # When an alert arrives on the high queue
    enqueue_email.delay(to="oncall@example.com", subject="Down", text="!", priority="high")

    # Then it goes out long before the chunk would have finished, and the chunk still does
    received = [m.rcpt_tos[0] for m in handler.wait_for(len(addresses) + 1, timeout=60)]
    assert received.index("oncall@example.com") < 8
    assert sorted(r for r in received if r != "oncall@example.com") == sorted(addresses)
    time.sleep(1)
    assert len(handler.messages) == len(addresses) + 1
