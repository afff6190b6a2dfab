"""A bulk chunk pipelines across messages (RFC 2920 3.1) and still settles each job alone.

On a server that offers PIPELINING, one thread sending a chunk writes the end of one
message's data and the next message's MAIL, RCPT and DATA together: the server finds
the next envelope already waiting behind each message's final dot.
"""

import time

import pytest

from emailq.core.errors import TransientError
from emailq.core.validation import validate_job
from emailq.producer import enqueue_bulk
from emailq.worker import recorder as recorder_module
from emailq.worker.delivery import Ready, prepare
from emailq.worker.ledger import JobState, Ledger
from emailq.worker.sender import SMTPSender
from emailq.worker.stream import Stream
from tests.integration.test_sender import make_settings
from tests.support.faults import FAST_RETRIES, dead_letters
from tests.support.smtp import DROP, SMTPTestServer

WELCOME = {"product": "Acme", "verify_url": "https://acme.example/v", "valid_hours": 24}
NEXT_ENVELOPE = ["MAIL", "RCPT", "DATA"]


def _settled(ledger: Ledger, job_ids: list[str], timeout: float = 30.0) -> list[JobState]:
    """The jobs' states once each has a verdict (the server's reply is read after it stored)."""
    deadline = time.monotonic() + timeout
    while True:
        states = [ledger.state(job_id) for job_id in job_ids]
        if all(s.final is not None for s in states) or time.monotonic() > deadline:
            return states
        time.sleep(0.05)


def _recipients(addresses):
    return [{"to": a, "context": {**WELCOME, "username": a.split("@")[0]}} for a in addresses]


def test_each_message_of_a_chunk_is_written_with_the_next_ones_envelope(
    smtp_server, start_worker, session_redis
):
    # Given one worker thread and a chunk of ten jobs
    handler = smtp_server.handler
    start_worker(smtp_server, concurrency=1)
    addresses = [f"user{i}@example.com" for i in range(10)]

    batch = enqueue_bulk(template="welcome", recipients=_recipients(addresses))

    # Then all ten arrive, each with its own Message-ID, each recorded as sent once
    received = handler.wait_for(10, timeout=60)
    assert [m.rcpt_tos for m in received] == [[a] for a in addresses]
    for message, job_id in zip(received, batch.job_ids, strict=True):
        assert message.message["Message-ID"].startswith(f"<{job_id}@")
    for state in _settled(Ledger(session_redis.client()), batch.job_ids):
        assert state.final == "sent" and len(state.attempts) == 1
    # And on one connection, every message but the last had the next envelope behind it
    assert len({session for session, _ in handler.behind_data}) == 1
    assert [verbs for _, verbs in handler.behind_data] == [NEXT_ENVELOPE] * 9 + [[]]


def test_a_deferred_message_and_a_refused_recipient_settle_alone_mid_stream(
    smtp_server, start_worker, session_redis
):
    # Given a chunk whose second message is deferred (451 after its data) once and whose
    # fourth address is refused for good
    handler = smtp_server.handler
    handler.data_replies_for["busy@example.com"] = ["451 4.3.0 Try again later"]
    handler.rcpt_replies["gone@example.com"] = "550 5.1.1 No such user"
    addresses = [
        "ann@example.com", "busy@example.com", "cy@example.com", "gone@example.com",
        "dee@example.com", "eve@example.com",
    ]  # fmt: skip
    start_worker(smtp_server, concurrency=1, **FAST_RETRIES)

    batch = enqueue_bulk(template="welcome", recipients=_recipients(addresses))

    # Then the refused one is dead-lettered alone, under its own job id
    [entry] = dead_letters(session_redis.client())
    assert entry["job_id"] == batch.job_ids[3] and entry["reason"] == "permanent"
    assert entry["failed_recipients"] == {"gone@example.com": [550, "5.1.1 No such user"]}
    # And every other address gets its message once, the deferred one on its retry
    received = handler.wait_for(5, timeout=60)
    delivered = sorted(m.rcpt_tos[0] for m in received)
    assert delivered == sorted(a for a in addresses if a != "gone@example.com")
    assert [r for _, r in handler.attempts("busy@example.com", "DATA")] == [
        "451 4.3.0 Try again later", "250",
    ]  # fmt: skip
    job_of = dict(zip(addresses, batch.job_ids, strict=True))
    for m in received:
        assert m.message["Message-ID"].startswith(f"<{job_of[m.rcpt_tos[0]]}@")
    others = ["ann@example.com", "cy@example.com", "dee@example.com", "eve@example.com"]
    busy, *rest = _settled(
        Ledger(session_redis.client()), [job_of[a] for a in ["busy@example.com", *others]]
    )
    assert busy.final == "sent"
    assert [a["outcome"] for a in busy.attempts] == ["transient", "sent"]
    for state in rest:
        assert state.final == "sent" and len(state.attempts) == 1
    # And the message after the deferred one was already on its way behind its data
    first_pass = handler.behind_data[:5]  # ann, busy (451), cy, dee, eve: gone has no DATA
    assert [verbs for _, verbs in first_pass[:2]] == [NEXT_ENVELOPE] * 2
    time.sleep(1)
    assert len(handler.messages) == 5  # nothing sent twice


def test_a_server_without_pipelining_gets_each_message_on_its_own(
    server_context, start_worker, session_redis
):
    with SMTPTestServer(server_context, pipelining=False) as server:
        start_worker(server, concurrency=1)
        addresses = [f"user{i}@example.com" for i in range(4)]

        batch = enqueue_bulk(template="welcome", recipients=_recipients(addresses))

        received = server.handler.wait_for(4, timeout=60)
        assert sorted(m.rcpt_tos[0] for m in received) == addresses
        assert [verbs for _, verbs in server.handler.behind_data] == [[]] * 4
        states = _settled(Ledger(session_redis.client()), batch.job_ids)
        assert [s.final for s in states] == ["sent"] * 4


# --- The stream in this process: what happens to the job whose envelope is in flight ------


class _NoStore:
    def apply(self, events: list) -> None:
        """Tracking events of these in-process tests go nowhere."""


@pytest.fixture
def stream_parts(smtp_server, ca_file, session_redis, monkeypatch):
    """The server, a sender to it, a ledger, and ``ready(address)``: a prepared job."""
    # This process's tracking recorder must not read the session Redis's "queued" events
    # for the rest of the run: other tests wait for those events there.
    track = recorder_module.Recorder(store_factory=_NoStore, source=None)
    monkeypatch.setattr(recorder_module, "_recorder", track)
    settings = make_settings(smtp_server, ca_file=ca_file)
    sender = SMTPSender(settings)
    ledger = Ledger(session_redis.client())

    def ready(address: str) -> Ready:
        job = validate_job({"to": address, "subject": "Hi", "text": "Hello"}, settings)
        prepared = prepare(job, job_id=f"job-{address}", ledger=ledger, settings=settings)
        assert isinstance(prepared, Ready)
        return prepared

    yield smtp_server, sender, ledger, ready
    sender.close()
    track.close()


def test_a_job_whose_envelope_was_written_but_not_its_data_is_let_go_when_the_chunk_stops(
    stream_parts, session_redis
):
    server, sender, ledger, ready = stream_parts
    settled: list[tuple[str, object]] = []

    def settle(key, outcome):
        settled.append((key, outcome))
        raise RuntimeError("Redis went away")  # as Interrupted does, from the chunk's settle

    stream = Stream(sender, settle)
    stream.send("a", ready("a@example.com"))
    with pytest.raises(RuntimeError):
        stream.send("b", ready("b@example.com"))  # a's data goes out with b's envelope
    stream.close()

    assert [key for key, _ in settled] == ["a"] and settled[0][1]["status"] == "sent"
    assert [m.rcpt_tos for m in server.handler.wait_for(1)] == [["a@example.com"]]
    assert server.handler.behind_data[0][1] == NEXT_ENVELOPE
    b = ledger.state("job-b@example.com")
    assert b.attempts == [] and b.final is None  # not recorded
    assert not session_redis.client().exists("emailq:job:job-b@example.com:lock")  # released
    time.sleep(0.5)
    assert len(server.handler.messages) == 1  # b's transaction never completed


def test_a_connection_lost_after_a_message_s_data_fails_it_alone_and_the_next_goes_anew(
    stream_parts,
):
    server, sender, ledger, ready = stream_parts
    server.handler.data_replies_for["b@example.com"] = [DROP]
    settled: dict[str, object] = {}
    stream = Stream(sender, settled.__setitem__)

    for address in ("a", "b", "c"):
        stream.send(address, ready(f"{address}@example.com"))
    stream.flush()
    stream.close()

    assert settled["a"]["status"] == settled["c"]["status"] == "sent"
    assert isinstance(settled["b"], TransientError)  # as a single send that lost its reply
    assert "disconnected" in str(settled["b"])
    assert sorted(m.rcpt_tos[0] for m in server.handler.wait_for(2)) == [
        "a@example.com", "c@example.com",
    ]  # fmt: skip
    assert ledger.state("job-b@example.com").attempts[0]["outcome"] == "transient"
    assert sender.opened == 2
