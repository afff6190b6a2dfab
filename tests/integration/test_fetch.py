"""A job leaves its queue and enters ``unacked`` in one step (``emailq.core.fetch``).

Each test runs a kombu consumer on the project's Redis transport against a private
redis-server. A consumer that dies the moment the job reaches it is simulated by making
the transport's delivery raise: nothing after the fetch's reply runs. kombu's stock
transport is run the same way, to show the gap this closes.
"""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Consumer, Producer, Queue
from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError

from emailq.core import backends, fetch
from emailq.core.keys import QUARANTINE, WAKE
from tests.support.redis import RedisServer

QUEUE = Queue("normal", routing_key="normal")
HIGH = Queue("high", routing_key="high")


class Died(BaseException):
    """The consumer process ended here (nothing catches a BaseException on the way)."""


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def publish(
    server: RedisServer, body: dict, transport: type = backends.Transport, queue: Queue = QUEUE
) -> None:
    with Connection(server.url, transport=transport) as conn:
        Producer(conn.channel()).publish(
            body, routing_key=queue.routing_key, serializer="json", declare=[queue]
        )


def consume(server: RedisServer, count: int, *, seconds: float = 10.0, **options) -> list:
    """Bodies of up to ``count`` messages taken (and acknowledged) within ``seconds``."""
    bodies: list = []

    def on_message(body: dict, message) -> None:  # noqa: ANN001 - kombu's Message
        bodies.append(body)
        message.ack()

    with (
        Connection(server.url, transport=backends.Transport, transport_options=options) as conn,
        Consumer(conn, [QUEUE], callbacks=[on_message], accept=["json"]),
    ):
        drain(conn, bodies, count, seconds=seconds)
    return bodies


def drain(
    conn: Connection, bodies: list, count: int, *, seconds: float = 10.0, tolerate: tuple = ()
) -> None:
    deadline = time.monotonic() + seconds
    while len(bodies) < count and time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=0.5)
        except (TimeoutError, *tolerate):
            pass


def die_on_delivery(server: RedisServer, transport: type) -> None:
    """A consumer that takes one job and dies before doing anything else with it."""

    def died(*_args: object) -> None:
        raise Died

    with (
        Connection(server.url, transport=transport) as conn,
        Consumer(conn, [QUEUE], callbacks=[lambda body, message: None], accept=["json"]),
    ):
        conn.transport._deliver = died
        with pytest.raises(Died):
            conn.drain_events(timeout=5)
        conn.transport.cycle._channels.clear()  # nothing more reaches Redis: no restore


def test_a_consumer_that_dies_as_the_job_reaches_it_leaves_the_job_unacknowledged(
    redis_server: RedisServer,
) -> None:
    # Given one job in `normal`
    publish(redis_server, {"n": 1})
    redis = redis_server.client()

    # When a consumer takes it and dies at once
    die_on_delivery(redis_server, backends.Transport)

    # Then the job is in `unacked`, whole, and its visibility timeout gives it back
    assert redis.llen("normal") == 0
    assert redis.hlen("unacked") == 1 and redis.zcard("unacked_index") == 1
    time.sleep(1.1)
    assert consume(redis_server, 1, visibility_timeout=1) == [{"n": 1}]
    assert redis.hlen("unacked") == 0 and redis.zcard("unacked_index") == 0


def test_kombus_own_transport_loses_that_job(redis_server: RedisServer) -> None:
    # The gap the fetch script closes: kombu pops (BRPOP), then records (a second trip).
    # If kombu closes it, this fails, and emailq.core.fetch can go.
    publish(redis_server, {"n": 1})
    redis = redis_server.client()

    die_on_delivery(redis_server, kombu_redis.Transport)

    assert redis.llen("normal") == 0
    assert redis.hlen("unacked") == 0


def test_a_full_redis_refuses_the_fetch_and_the_job_stays_queued(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a job in `normal` and a consumer on it
    publish(redis_server, {"n": 1})
    redis = redis_server.client()
    bodies: list = []
    with Connection(redis_server.url, transport=backends.Transport) as conn:
        callbacks = [lambda body, message: (bodies.append(body), message.ack())]
        with Consumer(conn, [QUEUE], callbacks=callbacks, accept=["json"]):
            # When Redis is over its maxmemory with noeviction as the consumer looks
            redis.config_set("maxmemory-policy", "noeviction")
            redis.config_set("maxmemory", 1)
            # (kombu's own restore sweep fails on it too, outside the fetch)
            drain(conn, bodies, 1, seconds=2, tolerate=(OutOfMemoryError,))

            # Then nothing is taken: the job is still queued, nothing is half-recorded,
            # and the refusal is logged
            assert bodies == []
            assert redis.llen("normal") == 1 and redis.hlen("unacked") == 0
            assert caplog.text.count("taking a job from Redis refused") == 1
            assert "maxmemory" in caplog.text

            # and once Redis has room again, the job is delivered
            redis.config_set("maxmemory", 0)
            drain(conn, bodies, 1)
    assert bodies == [{"n": 1}]
    assert "taking jobs from Redis works again" in caplog.text


def test_a_redis_that_forgot_the_script_is_sent_it_again(redis_server: RedisServer) -> None:
    # Given a consumer that has run the fetch script once (later fetches name it by digest)
    publish(redis_server, {"n": 1})
    publish(redis_server, {"n": 2})
    bodies: list = []
    with Connection(redis_server.url, transport=backends.Transport) as conn:
        callbacks = [lambda body, message: (bodies.append(body), message.ack())]
        with Consumer(conn, [QUEUE], callbacks=callbacks, accept=["json"]):
            conn.drain_events(timeout=5)
            # When Redis loses its script cache (a restart, SCRIPT FLUSH)
            redis_server.client().script_flush()
            # Then the next job still arrives
            drain(conn, bodies, 2)
    assert bodies == [{"n": 1}, {"n": 2}]


def test_a_publish_rings_the_queues_wake_up_list_and_keeps_it_short(
    redis_server: RedisServer,
) -> None:
    for n in range(100):
        publish(redis_server, {"n": n})
    assert redis_server.client().llen(WAKE + "normal") == 64


def test_a_job_published_by_another_kombu_client_is_still_found(
    redis_server: RedisServer,
) -> None:
    # No wake-up entry: the idle consumer looks again when its 1 s wait times out
    publish(redis_server, {"n": 1}, transport=kombu_redis.Transport)
    assert redis_server.client().llen(WAKE + "normal") == 0
    assert consume(redis_server, 1) == [{"n": 1}]


def test_a_malformed_item_is_quarantined_in_the_same_step(redis_server: RedisServer) -> None:
    # Given a JSON object that is no kombu envelope, between two jobs
    publish(redis_server, {"n": 1})
    redis = redis_server.client()
    redis.lpush("normal", b'{"properties": {"delivery_tag": "t"}}')
    publish(redis_server, {"n": 2})

    # When a consumer takes the three
    bodies = consume(redis_server, 2)

    # Then both jobs arrive and the item is in the quarantine, not in unacked
    assert bodies == [{"n": 1}, {"n": 2}]
    assert redis.llen(QUARANTINE) == 1
    assert "exchange and routing_key" in redis.lindex(QUARANTINE, 0).decode()
    assert redis.hlen("unacked") == 0


def hold_one_job(server: RedisServer) -> tuple[Connection, Any]:
    """A consumer that has taken a job and not finished it, and the channel it holds it on."""
    conn = Connection(server.url, transport=backends.Transport)
    held: list = []
    consumer = Consumer(conn, [QUEUE], callbacks=[lambda b, m: held.append(m)], accept=["json"])
    consumer.consume()
    conn.drain_events(timeout=5)
    assert len(held) == 1
    return conn, consumer.channel


def test_a_channel_closed_after_its_transport_was_released_keeps_its_job(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a consumer holding an unfinished job
    publish(redis_server, {"n": 1})
    conn, channel = hold_one_job(redis_server)

    # When its kombu Connection releases the transport before the channel is closed, as
    # Celery's consumer does on a broker error
    conn.transport.client = None  # kombu's Connection._do_close_transport
    channel.close()  # (kombu's own pool raised AttributeError here, and the worker stopped)

    # Then the job stays in `unacked`, and the visibility timeout gives it back
    assert "1 unfinished job(s) left in Redis's unacked set" in caplog.text
    assert redis_server.client().hlen("unacked") == 1
    time.sleep(1.1)
    assert consume(redis_server, 1, visibility_timeout=1) == [{"n": 1}]


def test_a_channel_closed_while_redis_is_down_does_not_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a consumer holding an unfinished job, on a Redis that persists every write
    server = RedisServer(tmp_path / "aof", fsync="always").start()
    try:
        publish(server, {"n": 1})
        conn, channel = hold_one_job(server)

        # When Redis dies and the channel is closed
        server.kill()
        channel.close()
        assert "1 unfinished job(s) left in Redis's unacked set" in caplog.text

        # Then, with Redis back, the job is given back after the visibility timeout
        server.start()
        time.sleep(1.1)
        assert consume(server, 1, visibility_timeout=1) == [{"n": 1}]
    finally:
        server.stop()


def test_acknowledging_on_a_closed_channel_is_a_connection_error(
    redis_server: RedisServer,
) -> None:
    # Given a job held on a channel that is then closed after its transport was released
    # (Celery's order on a broker error), while a pool thread is still sending the job
    publish(redis_server, {"n": 1})
    conn, channel = hold_one_job(redis_server)
    [message] = list(channel.qos._delivered.values())
    conn.transport.client = None
    channel.close()

    # When the thread finishes and acknowledges, the error is one kombu's callers log and
    # survive (Message.ack_log_error), not the AttributeError that stopped the worker
    with pytest.raises(RedisConnectionError):
        message.ack()
    conn.release()


def look_once(
    server: RedisServer, queues: list[Queue], *, room: int, fail_on: int | None = None
) -> tuple[list, dict[str, int], Exception | None]:
    """One read of one fetch by a consumer with ``room`` prefetch credit that acknowledges
    nothing and fails on the body ``{"n": fail_on}``: the bodies it was given, the lengths
    of Redis's lists and unacked set just after, and the error the read raised."""
    bodies: list = []
    redis = server.client()

    def on_message(body: dict, _message) -> None:  # noqa: ANN001 - kombu's Message
        bodies.append(body)
        if body.get("n") == fail_on:
            raise RuntimeError("the consumer failed on this job")

    error = None
    with Connection(server.url, transport=backends.Transport) as conn:
        consumer = Consumer(conn, queues, callbacks=[on_message], accept=["json"])
        consumer.qos(prefetch_count=room)
        consumer.consume()
        try:
            conn.drain_events(timeout=5)
        except RuntimeError as exc:
            error = exc
        lengths = {
            "unacked": redis.hlen("unacked"), "unacked_index": redis.zcard("unacked_index"),
            "normal": redis.llen("normal"), "high": redis.llen("high"),
        }  # fmt: skip
    return bodies, lengths, error


def test_one_fetch_fills_the_consumers_room_high_priority_first(
    redis_server: RedisServer,
) -> None:
    # Given three jobs in `normal`, then two in `high`
    for n in (1, 2, 3):
        publish(redis_server, {"n": n})
    for n in (4, 5):
        publish(redis_server, {"n": n}, queue=HIGH)

    # When a consumer of both queues with room for eight reads one fetch
    bodies, lengths, _ = look_once(redis_server, [HIGH, QUEUE], room=8)

    # Then all five came in it: the high jobs first, each queue oldest first, all unacked
    assert [b["n"] for b in bodies] == [4, 5, 1, 2, 3]
    assert lengths == {"unacked": 5, "unacked_index": 5, "normal": 0, "high": 0}


def test_one_fetch_takes_no_more_than_the_prefetch_credit(redis_server: RedisServer) -> None:
    for n in range(5):
        publish(redis_server, {"n": n})

    bodies, lengths, _ = look_once(redis_server, [QUEUE], room=2)

    assert [b["n"] for b in bodies] == [0, 1]
    assert lengths["unacked"] == 2 and lengths["normal"] == 3


def test_a_delivery_that_fails_leaves_the_rest_of_its_fetch_delivered(
    redis_server: RedisServer,
) -> None:
    # Given three jobs taken by one fetch, the first of which the consumer fails on
    for n in (1, 2, 3):
        publish(redis_server, {"n": n})

    # When the fetch is read, the error comes out after the others were delivered
    bodies, lengths, error = look_once(redis_server, [QUEUE], room=8, fail_on=1)
    assert isinstance(error, RuntimeError) and "failed on this job" in str(error)
    assert [b["n"] for b in bodies] == [1, 2, 3]

    # and every job, the failed one too, was held in unacked: none lost or left queued
    assert lengths["unacked"] == 3 and lengths["normal"] == 0


@contextmanager
def watching(server: RedisServer) -> Iterator[list[str]]:
    """Every command Redis runs meanwhile (MONITOR), as text."""
    seen: list[str] = []
    with server.client().monitor() as monitor:

        def listen() -> None:
            with suppress(Exception):  # the connection closes under it at the end
                while True:
                    seen.append(monitor.next_command()["command"])

        thread = threading.Thread(target=listen, daemon=True)
        thread.start()
        try:
            yield seen
        finally:
            time.sleep(0.2)  # the last commands reach the monitor
            monitor.connection.disconnect()
            thread.join(timeout=5)


def _is_fetch(command: str) -> bool:
    script = command.startswith("EVAL ") and "unacked, index, quarantine" in command
    return script or command.startswith(f"EVALSHA {fetch._SCRIPT_SHA}")


def test_a_fetch_that_empties_the_queues_is_followed_by_a_wait_not_another_fetch(
    redis_server: RedisServer,
) -> None:
    # Given one job queued (its wake-up entry already taken), and a consumer with room for more
    publish(redis_server, {"n": 1})
    redis = redis_server.client()
    redis.delete(WAKE + "normal")
    bodies: list = []
    with (
        watching(redis_server) as seen,
        Connection(redis_server.url, transport=backends.Transport) as conn,
    ):
        callbacks = [lambda body, message: (bodies.append(body), message.ack())]
        with Consumer(conn, [QUEUE], callbacks=callbacks, accept=["json"]) as consumer:
            consumer.qos(prefetch_count=8)
            # When it takes the job and then goes on looking
            conn.drain_events(timeout=5)
            drain(conn, bodies, 2, seconds=0.5)
            # Then that one fetch was the only one: the channel went to wait for a wake-up
            assert bodies == [{"n": 1}]
            assert [c.split()[0] for c in seen if _is_fetch(c) or c.startswith("BRPOP")] == [
                "EVAL", "BRPOP"
            ]  # fmt: skip

            # and the next job published wakes it at once
            publish(redis_server, {"n": 2})
            started = time.monotonic()
            drain(conn, bodies, 2, seconds=5)
            assert bodies == [{"n": 1}, {"n": 2}]
            assert time.monotonic() - started < 0.5
