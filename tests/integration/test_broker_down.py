"""A Redis that cannot take jobs: ``BrokerUnavailable`` within 2 s, ``QueueFull`` near maxmemory.

Settings are read once per process, so every scenario that needs a REDIS_URL other than
the session's runs the producer in a fresh interpreter, which measures its own call: the
2 s are the caller's wait, not the interpreter's start-up. Also here: publishing after a
SQLAlchemy (or Django) transaction commits, against the session's Redis.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, insert, select
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from emailq import InvalidEmail, enqueue_email
from emailq.producer import enqueue_after_commit
from emailq.producer.publishing import CLAIM_TTL_S, DEADLINE_S
from tests.support import free_port
from tests.support.redis import RedisServer

PASSWORD = "hunter2-never-shown"
GOOD = {"to": "ann@example.com", "subject": "Hello", "text": "body"}
WELCOME = {"product": "Acme", "verify_url": "https://acme.example/v", "valid_hours": 24}

# The producer's entry points, as a fresh interpreter runs them (sys.argv[1] picks).
CALLS = {
    "delay": "enqueue_email.delay(**GOOD)",
    "idempotent": "enqueue_email.delay(**GOOD, idempotency_key='order-42-receipt')",
    "bulk": "enqueue_bulk('welcome', [{'to': 'ann@example.com', 'context': {**WELCOME, "
    "'username': 'ann'}}, {'to': 'bob@example.com', 'context': {**WELCOME, 'username': 'bob'}}])",
    # an alert reads its cooldown key in Redis before it publishes
    "alert": "__import__('emailq.producer.notifications', fromlist=['x']).send_alert("
    "'Disk usage', 'web-1', '97%', '90%', to='ops@example.com')",
}
PROBE = """
import json, sys, time
from emailq import BrokerUnavailable, QueueFull, enqueue_bulk, enqueue_email
GOOD = {good!r}
WELCOME = {welcome!r}
{setup}
outcome = {{"error": None}}
started = time.monotonic()
try:
    {call}
except BrokerUnavailable as exc:
    outcome = {{
        "error": type(exc).__name__, "message": str(exc),
        "connection_error": isinstance(exc, ConnectionError),
        "cause": type(exc.__cause__).__name__ if exc.__cause__ else None,
        "notes": getattr(exc, "__notes__", []),
    }}
outcome["elapsed"] = time.monotonic() - started
{after}
print(json.dumps(outcome))
"""


def run_producer(
    redis_url: str, call: str, *, setup: str = "", after: str = "", **env: str
) -> dict:
    """Run one producer call in a fresh interpreter with REDIS_URL; its outcome and time.

    ``setup`` runs before the timed ``call`` and ``after`` once it is timed; ``after`` may
    add to the ``outcome`` dict that comes back.
    """
    code = PROBE.format(
        good=GOOD, welcome=WELCOME, setup=textwrap.dedent(setup), call=call,
        after=textwrap.dedent(after),
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "REDIS_URL": redis_url, **env},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    outcome["stderr"] = done.stderr
    return outcome


def _url(port: int) -> str:
    return f"redis://:{PASSWORD}@127.0.0.1:{port}/0"


@pytest.fixture
def refused() -> str:
    """Nothing listens on the port: the kernel refuses at once."""
    return _url(free_port())


@pytest.fixture
def silent() -> Iterator[str]:
    """The port accepts connections (the kernel's backlog) but nothing ever answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as server:
        yield _url(server.getsockname()[1])


@pytest.fixture
def blackholed() -> Iterator[str]:
    """A host that drops every SYN: the listener's backlog is full, so connects hang."""
    with socket.create_server(("127.0.0.1", 0), backlog=0) as server:
        port = server.getsockname()[1]
        filler = socket.create_connection(("127.0.0.1", port), timeout=1)
        with socket.socket() as probe:  # the precondition: one more connect gets no answer
            probe.settimeout(0.3)
            with pytest.raises(TimeoutError):
                probe.connect(("127.0.0.1", port))
        yield _url(port)
        filler.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


# --- an unreachable broker -------------------------------------------------------------


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("broker", ["refused", "blackholed", "silent"])
def test_an_unreachable_broker_raises_broker_unavailable_within_two_seconds(broker, call, request):
    # Given a REDIS_URL (with a password) whose host refuses, drops or ignores us
    url = request.getfixturevalue(broker)

    # When the application queues an email, with or without an idempotency key, or a batch
    outcome = run_producer(url, CALLS[call])

    # Then it hears BrokerUnavailable, a ConnectionError, within the contract's 2 s
    print(f"{broker}/{call}: {outcome['elapsed']:.3f}s")
    assert outcome["error"] == "BrokerUnavailable", outcome
    assert outcome["connection_error"] is True
    assert outcome["elapsed"] < DEADLINE_S, outcome
    # And the message names REDIS_URL without its password
    assert "REDIS_URL=redis://:**@127.0.0.1:" in outcome["message"]
    assert PASSWORD not in outcome["message"] + outcome["stderr"]


def test_a_broker_lost_mid_publish_raises_broker_unavailable_not_the_failed_release(
    private_redis,
):
    # Given a Redis that dies after the idempotency key is claimed, as the job is published
    lose_redis = f"""
        import os, signal, socket, time
        import celery.app.task
        publish = celery.app.task.Task.apply_async
        def lose_redis_then_publish(self, *args, **kwargs):
            os.kill({private_redis.process.pid}, signal.{signal.SIGKILL.name})
            while True:  # until the port refuses: the server is gone
                try:
                    socket.create_connection(("127.0.0.1", {private_redis.port}), 0.1).close()
                    time.sleep(0.01)
                except OSError:
                    break
            return publish(self, *args, **kwargs)
        celery.app.task.Task.apply_async = lose_redis_then_publish
    """

    # When the application queues an email with an idempotency key
    outcome = run_producer(private_redis.url, CALLS["idempotent"], setup=lose_redis)
    print(f"lost mid-publish: {outcome['elapsed']:.3f}s")

    # Then the publish's failure is what it hears, in time; the release's is only logged
    assert outcome["error"] == "BrokerUnavailable", outcome
    assert outcome["cause"] == "OperationalError"  # kombu's, not the release's redis error
    assert outcome["elapsed"] < DEADLINE_S, outcome
    assert "not released" in outcome["stderr"]


def test_a_claim_that_could_not_be_released_expires_within_the_claim_ttl(private_redis):
    # Given a Redis that stops answering writes after the key is claimed (CLIENT PAUSE)
    pause_writes = f"""
        import celery.app.task, redis
        publish = celery.app.task.Task.apply_async
        def pause_then_publish(self, *args, **kwargs):
            redis.Redis(port={private_redis.port}).execute_command(
                "CLIENT", "PAUSE", 2500, "WRITE")
            return publish(self, *args, **kwargs)
        celery.app.task.Task.apply_async = pause_then_publish
    """

    # When the application queues an email with an idempotency key
    outcome = run_producer(private_redis.url, CALLS["idempotent"], setup=pause_writes)
    print(f"writes paused mid-publish: {outcome['elapsed']:.3f}s")

    # Then it hears BrokerUnavailable in time, with no time left to release the key
    assert outcome["error"] == "BrokerUnavailable", outcome
    assert outcome["elapsed"] < DEADLINE_S, outcome
    assert "stays claimed" in outcome["stderr"]
    # And once Redis answers again, the claim is short-lived, not a day-long dead end
    client = private_redis.client()
    client.execute_command("CLIENT", "UNPAUSE")
    assert 0 < client.ttl("emailq:idempotency:order-42-receipt") <= CLAIM_TTL_S
    assert client.llen("normal") == 0


def test_a_redis_restart_between_two_calls_is_not_an_error(private_redis):
    # Given a producer whose pooled connections all died with a Redis restart
    restart = f"""
        import shutil, subprocess
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
        enqueue_email.delay(**GOOD)
        # (without retries: redis-py would retry SHUTDOWN against the closed port for seconds)
        redis.Redis(port={private_redis.port}, retry=Retry(NoBackoff(), 0)).shutdown(nosave=True)
        subprocess.Popen(
            [shutil.which("redis-server"), "--port", "{private_redis.port}", "--save", "",
             "--bind", "127.0.0.1", "--appendonly", "no"],
            cwd="{private_redis.directory}",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,  # run() waits for our pipes
        )
        while True:
            try:
                redis.Redis(port={private_redis.port}).ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
    """

    # When it queues the next email (no publish retries: redis-py replaces dead connections)
    outcome = run_producer(private_redis.url, CALLS["idempotent"], setup=restart)

    # Then it is queued
    assert outcome["error"] is None, outcome
    client = private_redis.client()
    assert client.llen("normal") == 1
    # the restarted server is not the fixture's process
    redis.Redis(port=private_redis.port, retry=Retry(NoBackoff(), 0)).shutdown(nosave=True)


# --- a Redis near its maxmemory --------------------------------------------------------


def _fill_to(redis: RedisServer, share_of_maxmemory: float) -> None:
    """Set maxmemory so that what Redis uses now is ``share_of_maxmemory`` of it."""
    client = redis.client()
    pipe = client.pipeline()
    for i in range(2000):  # many small values: a big one's query buffer is freed later
        pipe.set(f"filler:{i}", "x" * 1000)
    pipe.execute()
    used = client.info("memory")["used_memory"]
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", str(int(used / share_of_maxmemory)))


@pytest.mark.parametrize("call", ["delay", "idempotent", "bulk"])
def test_a_redis_above_the_soft_limit_refuses_new_jobs_with_queue_full(private_redis, call):
    # Given a Redis at about 91% of its maxmemory, and a soft limit of 50%
    _fill_to(private_redis, 1 / 1.1)

    # When the application queues an email or a batch
    outcome = run_producer(private_redis.url, CALLS[call], REDIS_SOFT_LIMIT_PERCENT="50")

    # Then it hears QueueFull, which says what to do, and nothing was published or claimed
    assert outcome["error"] == "QueueFull", outcome
    assert "REDIS_SOFT_LIMIT_PERCENT=50" in outcome["message"]
    assert "maxmemory" in outcome["message"] and "retry later" in outcome["message"]
    client = private_redis.client()
    assert client.llen("normal") == 0
    assert client.keys("emailq:*") == []


def test_the_memory_reading_is_cached_and_a_drained_redis_takes_jobs_again(private_redis):
    _fill_to(private_redis, 1 / 1.1)
    raise_the_limit = f"""
        import redis
        full = []
        for _ in range(50):
            try:
                enqueue_email.delay(**GOOD)
            except QueueFull:
                full.append(1)
        assert len(full) == 50
        redis.Redis(port={private_redis.port}).config_set("maxmemory", "0")
        time.sleep(1.1)  # the reading is at most a second old
    """

    outcome = run_producer(
        private_redis.url, "enqueue_email.delay(**GOOD)", setup=raise_the_limit,
        REDIS_SOFT_LIMIT_PERCENT="50",
    )  # fmt: skip

    assert outcome["error"] is None, outcome
    client = private_redis.client()
    assert client.llen("normal") == 1
    # 51 calls, about 1.2 s apart at the ends: two or three INFO commands, not 51
    assert int(client.info("commandstats")["cmdstat_info"]["calls"]) <= 3


def test_a_redis_that_fills_between_readings_refuses_with_queue_full_too(private_redis):
    # Given a producer whose last memory reading was fine, and a Redis full since
    fill_up = f"""
        import redis
        enqueue_email.delay(**GOOD)
        client = redis.Redis(port={private_redis.port})
        client.config_set("maxmemory", str(client.info("memory")["used_memory"] // 2))
    """

    # When it queues the next email within the second
    outcome = run_producer(private_redis.url, CALLS["idempotent"], setup=fill_up)

    # Then Redis's own refusal (OOM) reaches it as QueueFull
    assert outcome["error"] == "QueueFull", outcome
    assert outcome["cause"] == "OutOfMemoryError"
    assert private_redis.client().llen("normal") == 1  # the first email only


# --- publishing after a transaction commits ---------------------------------------------

metadata = MetaData()
orders = Table("orders", metadata, Column("id", Integer, primary_key=True), Column("note", String))


@pytest.fixture
def engine(tmp_path: Path):
    engine = create_engine(f"sqlite:///{tmp_path / 'app.sqlite3'}")
    metadata.create_all(engine)
    yield engine
    engine.dispose()


def _published_ids(redis) -> list[str]:
    return [json.loads(raw)["headers"]["id"] for raw in reversed(redis.lrange("normal", 0, -1))]


def test_an_email_queued_in_a_transaction_is_published_when_it_commits(session_redis, engine):
    redis = session_redis.client()
    with Session(engine) as session:
        session.execute(insert(orders).values(id=42, note="shipped"))
        job_id = enqueue_after_commit(session, **GOOD)
        assert redis.llen("normal") == 0  # not before the row is committed

        session.commit()

    assert _published_ids(redis) == [job_id]
    assert redis.llen("emailq:events") == 1  # its "queued" tracking event


def test_a_rolled_back_or_abandoned_transaction_publishes_nothing(session_redis, engine):
    redis = session_redis.client()
    with Session(engine) as session:
        session.execute(insert(orders).values(id=1))
        enqueue_after_commit(session, **GOOD)
        session.rollback()
        session.execute(insert(orders).values(id=2))
        enqueue_after_commit(session, **GOOD)
    # closed without a commit
    with Session(engine) as session:
        session.execute(insert(orders).values(id=3))
        session.commit()  # a later commit does not resurrect the dropped jobs

    assert redis.llen("normal") == 0
    with Session(engine) as session:
        assert session.scalars(select(orders.c.id)).all() == [3]


def test_a_savepoint_decides_for_the_emails_queued_inside_it(session_redis, engine):
    redis = session_redis.client()
    with Session(engine) as session:
        outer = enqueue_after_commit(session, **GOOD)
        with session.begin_nested():
            kept = enqueue_after_commit(session, **GOOD)
        assert redis.llen("normal") == 0  # a released savepoint is not a commit
        savepoint = session.begin_nested()
        enqueue_after_commit(session, **GOOD)
        savepoint.rollback()

        session.commit()

    assert _published_ids(redis) == [outer, kept]


def test_bad_input_raises_at_the_call_inside_the_transaction(session_redis, engine):
    with Session(engine) as session:
        with pytest.raises(InvalidEmail):
            enqueue_after_commit(session, **{**GOOD, "to": "ann@@example.com"})
        session.execute(insert(orders).values(id=7))
        session.commit()  # the transaction itself goes on

    assert session_redis.client().llen("normal") == 0


def test_options_and_scoped_sessions_are_supported(session_redis, engine):
    redis = session_redis.client()
    scoped = scoped_session(sessionmaker(engine))
    enqueue_after_commit(scoped, options={"countdown": 3600}, **GOOD)
    enqueue_after_commit(scoped, **{**GOOD, "priority": "high"})
    scoped.commit()
    scoped.remove()

    assert redis.zcard("emailq:delayed") == 1 and redis.llen("high") == 1


def test_a_broker_down_at_commit_raises_after_the_database_commit(refused, tmp_path):
    # Given a session that created a table and queued an email after its commit
    database = tmp_path / "app.sqlite3"
    commit = f"""
        from sqlalchemy import create_engine, text
        from sqlalchemy.orm import Session
        from emailq.producer import enqueue_after_commit
        session = Session(create_engine("sqlite:///{database}"))
        session.execute(text("create table t (x int)"))
        enqueue_after_commit(session, **GOOD)
    """
    use_again = """
        session.execute(text("insert into t values (1)"))
        session.commit()
        outcome["rows"] = session.execute(text("select count(*) from t")).scalar()
    """

    # When the session commits while Redis is down
    outcome = run_producer(refused, "session.commit()", setup=commit, after=use_again)
    print(f"commit with the broker down: {outcome['elapsed']:.3f}s")

    # Then commit() raises BrokerUnavailable in time, saying the database did commit
    assert outcome["error"] == "BrokerUnavailable", outcome
    assert outcome["elapsed"] < DEADLINE_S
    assert any("database transaction was committed" in n for n in outcome["notes"])
    # And the session goes on working: the table it created is there, and takes rows
    assert outcome["rows"] == 1


def test_django_delay_on_commit_validates_now_and_publishes_on_commit(session_redis, monkeypatch):
    # Given Django's transaction.on_commit (a stand-in: Django is not a dependency)
    callbacks = []
    transaction = types.SimpleNamespace(on_commit=callbacks.append)
    django_db = types.ModuleType("django.db")
    django_db.transaction = transaction  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "django", types.ModuleType("django"))
    monkeypatch.setitem(sys.modules, "django.db", django_db)
    redis = session_redis.client()

    # Bad input raises at the call; good input waits for the commit
    with pytest.raises(InvalidEmail):
        enqueue_email.delay_on_commit(**{**GOOD, "to": "ann@@example.com"})
    job_id = enqueue_email.delay_on_commit(**GOOD)
    assert len(callbacks) == 1 and redis.llen("normal") == 0

    callbacks[0]()  # Django runs it after the commit

    assert _published_ids(redis) == [job_id]
