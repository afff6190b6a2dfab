"""The relay misbehaves for a while: a 451 storm, refused connections, a cut after the dot.

Real processes: the session redis-server, an aiosmtpd relay whose handler injects the
fault, and ``celery -A emailq.worker worker`` with FAST_RETRIES (backoff 1 s doubling up
to 8 s, no jitter). Each test prints one ``FAULT`` line (``-s`` shows it) with the counts
of ``tests/faults/harness.py``.

Short form by default; ``FAULTS_LONG=1`` (``make faults``) runs the long form (see
``tests/faults/scale.py``): more jobs, and a 60 s relay outage instead of 8 s.
"""

import time

from emailq.producer import enqueue_email
from emailq.worker import deadletter
from tests.faults import harness
from tests.faults.scale import FORM, pick, timeout
from tests.support.faults import FAST_RETRIES
from tests.support.redis import RedisServer
from tests.support.smtp import DROP, Received, SMTPTestServer

THREADS = 4
BUSY = "451 4.3.0 busy"


def publish(addresses: list[str], tag: str) -> dict[str, list[str]]:
    jobs: dict[str, list[str]] = {}
    for i, address in enumerate(addresses):
        jobs[enqueue_email.delay(to=address, subject=f"{tag} {i}", text="body").id] = [address]
    return jobs


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in zip(times, times[1:], strict=False)]


@timeout
def test_a_451_storm_retries_with_growing_intervals_and_dead_letters_only_after_max_retries(
    smtp_server: SMTPTestServer, start_worker, session_redis: RedisServer
) -> None:
    # Given a relay answering 451 to the first 4 DATA per job in the batch (a storm of K
    # replies, whoever the job), and one job it answers 451 five times: one past MAX_RETRIES
    max_retries = int(FAST_RETRIES["MAX_RETRIES"])
    count = pick(10, 60)
    handler = smtp_server.handler
    handler.data_replies = [BUSY] * (max_retries * count)
    doomed = "doomed@example.com"
    handler.data_replies_for[doomed] = [BUSY] * (max_retries + 1)
    client = session_redis.client()
    start_worker(smtp_server, concurrency=THREADS, **FAST_RETRIES)

    # When the batch is sent
    addresses = [f"storm{i}@example.com" for i in range(count)]
    jobs = publish([*addresses, doomed], "storm")
    result = harness.settle(jobs, lambda: list(handler.messages), client, timeout=pick(90, 180))

    # Then a job is dead-lettered only after MAX_RETRIES retries, each of them answered 451
    dead = {s.entry["job_id"]: s.entry for s in deadletter.read(client)}
    for job_id, entry in dead.items():
        [address] = jobs[job_id]
        replies = [reply for _, reply in handler.attempts(address, "DATA")]
        assert entry["reason"] == "exhausted"
        assert replies == [BUSY] * (max_retries + 1), (address, replies)
    doomed_id = next(j for j, to in jobs.items() if to == [doomed])
    assert doomed_id in dead
    # And the others are delivered once, after the storm, with growing intervals between tries
    widths: list[list[float]] = []
    for address in [*addresses, doomed]:
        times = [t for t, _ in handler.attempts(address, "DATA")]
        widths.append(gaps(times))
        assert gaps(times) == sorted(gaps(times)), (address, gaps(times))
        for n, gap in enumerate(gaps(times)):
            assert gap >= 0.9 * min(2**n, 8), (address, gaps(times))  # 1, 2, 4, 8 s
    attempts = [len(handler.attempts(a, "DATA")) for a in addresses]
    longest = max(widths, key=len)
    result.figures.update(
        storm_replies=max_retries * count,
        attempts_per_job=f"{min(attempts)}-{max(attempts)}",
        intervals="/".join(f"{g:.1f}" for g in longest),
    )
    result.report(f"451-storm[{FORM}]")
    counts = result.counts
    assert counts["lost"] == 0, result.ids("lost")
    assert counts["duplicated"] == 0, result.ids("duplicated")
    assert counts["pending"] == 0, result.ids("pending")
    assert counts["delivered"] + len(dead) == len(jobs)
    assert handler.data_replies == []  # the whole storm was answered


@timeout
def test_a_relay_refusing_connections_for_a_while_gets_every_job_and_dead_letters_none(
    smtp_server: SMTPTestServer, start_worker, session_redis: RedisServer
) -> None:
    # Given a worker with a retry budget of 2, sending a batch
    count = pick(30, 200)
    outage_s = pick(8.0, 60.0)
    handler = smtp_server.handler
    client = session_redis.client()
    worker = start_worker(smtp_server, concurrency=THREADS, **{**FAST_RETRIES, "MAX_RETRIES": "2"})
    jobs = publish([f"outage{i}@example.com" for i in range(count)], "outage")
    deadline = time.monotonic() + 60
    while len(handler.messages) < count // 4:
        assert time.monotonic() < deadline
        time.sleep(0.05)

    # When the relay refuses every connection for a while, mid-batch, then comes back
    smtp_server.down()
    down_at = time.monotonic()
    at_outage = len(handler.messages)
    time.sleep(outage_s)
    smtp_server.up()
    up_at = time.monotonic()
    result = harness.settle(
        jobs, lambda: list(handler.messages), client, timeout=pick(90, 400), quiet_s=2
    )

    # Then every job goes out afterwards, none dead-lettered though each failed > 2 times
    after = [m for m in handler.messages if m.at > up_at]
    result.figures.update(
        outage=outage_s,
        delivered_before_outage=at_outage,
        delivered_during_outage=len([m for m in handler.messages if down_at < m.at <= up_at]),
        first_after_up=min((m.at for m in after), default=up_at) - up_at,
        recovery_after_up=harness.last_delivery(handler.messages) - up_at,
        circuit_opened=worker.log().count("connection failures in a row"),
    )
    result.report(f"relay-down[{FORM}]")
    counts = result.counts
    assert counts["dead_by_reason"] == {}
    assert counts["lost"] == 0, result.ids("lost")
    assert counts["pending"] == 0, result.ids("pending")
    assert counts["delivered"] == count
    # A message mid-DATA when the relay stopped can be sent again: one per thread at most.
    assert counts["duplicated"] <= THREADS, result.ids("duplicated")
    assert worker.log().count("connection failures in a row") == 1  # one CRITICAL per outage


@timeout
def test_a_connection_cut_after_the_final_dot_is_sent_again_with_the_same_message_id(
    smtp_server: SMTPTestServer, start_worker, session_redis: RedisServer
) -> None:
    # Given a relay that cuts the connection after the final dot of some jobs' messages,
    # before its reply: it has the message, the worker never hears the 250
    count = pick(20, 100)
    cuts = pick(4, 20)
    handler = smtp_server.handler
    client = session_redis.client()
    addresses = [f"cut{i}@example.com" for i in range(count)]
    cut = set(addresses[:: count // cuts][:cuts])
    for address in cut:
        handler.data_replies_for[address] = [DROP]
    accept = handler.handle_DATA

    async def keep_then_cut(server, session, envelope) -> str:  # noqa: ANN001 - aiosmtpd's hook
        script = handler.data_replies_for.get(envelope.rcpt_tos[0])
        if script and script[0] == DROP:  # the relay took the message before the cut
            copy = Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
            handler.messages.append(copy)
        return await accept(server, session, envelope)

    handler.handle_DATA = keep_then_cut
    start_worker(smtp_server, concurrency=THREADS, **FAST_RETRIES)

    # When the batch is sent
    jobs = publish(addresses, "cut")
    result = harness.settle(
        jobs, lambda: list(handler.messages), client, timeout=pick(60, 120), quiet_s=2
    )

    # Then each cut job reaches its recipient twice (at-least-once), with one Message-ID; the
    # others once
    result.figures.update(cut_after_dot=len(cut))
    result.report(f"cut-after-dot[{FORM}]")
    counts = result.counts
    assert counts["lost"] == 0, result.ids("lost")
    assert counts["pending"] == 0, result.ids("pending")
    assert counts["dead_by_reason"] == {}
    assert counts["delivered"] == count
    duplicated = set(result.ids("duplicated"))
    assert {jobs[j][0] for j in duplicated} == cut
    assert counts["extra_copies"] == len(cut)
    for job_id in duplicated:
        ids = [m.message["Message-ID"] for m in handler.messages if harness.job_of(m) == job_id]
        assert ids == [f"<{job_id}@example.com>"] * 2
