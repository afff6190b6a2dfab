"""Redis is SIGKILLed mid-batch and restarted from its append-only file.

A private redis-server (``--appendonly yes``, ``--appendfsync always`` or ``everysec``,
``--dir`` in the test's tmp_path) is the broker, the ledger and the delayed set of a real
``celery -A emailq.worker worker``. A batch is published to it through a private Celery
app (each ``send_task`` returns once Redis replied: the job is acknowledged to the
producer), the worker starts on it, and Redis is SIGKILLed a quarter of the way through,
then started again on the same port from the same directory.

Counted per fsync policy: jobs lost (acknowledged to the producer, never delivered, not
queued) and duplicated (a ledger write or an acknowledgement lost). A SIGKILL kills the
process, not the machine: what Redis had handed to write(2) survives in the page cache,
so ``everysec`` can only lose what Redis itself had not written yet; the second of writes
a power cut can lose is out of reach of this test.

The AOF is also checked for a job popped off its queue with no ``unacked`` entry written
with it (``harness.popped_never_unacked``): kombu's own Redis transport pops (BRPOP) and
records in a second round trip, so a Redis killed in between persisted the pop and nothing
else, and the job was lost whatever the fsync policy. emailq's fetch script does both in
one step; the test fails on any such job, and on any loss.

Short form by default: 100 jobs, one kill, ``always`` only (``everysec`` recovers like it,
but a lock it kept can add a 30 s deferral). ``FAULTS_LONG=1`` (``make faults``): 1000
jobs, three kills, ``always`` and ``everysec`` (see ``tests/faults/scale.py``).
"""

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from tests.faults import harness
from tests.faults.scale import FORM, long_only, pick, timeout
from tests.support.faults import FAST_RETRIES
from tests.support.redis import RedisServer
from tests.support.smtp import SMTPTestServer

pytestmark = pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")

THREADS = 4


def wait_for_messages(smtp_server: SMTPTestServer, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(smtp_server.messages) < count:
        assert time.monotonic() < deadline, f"{len(smtp_server.messages)} of {count} received"
        time.sleep(0.05)


@pytest.fixture
def aof_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", fsync=request.param).start()
    yield server
    server.stop()


@timeout
@pytest.mark.parametrize(
    "aof_redis", ["always", pytest.param("everysec", marks=long_only)], indirect=True
)
def test_redis_killed_mid_batch_and_restarted_from_its_aof_loses_no_acknowledged_job(
    smtp_server: SMTPTestServer, aof_redis: RedisServer, start_worker
) -> None:  # aof_redis before start_worker: the worker stops while its Redis still runs
    # Given a batch acknowledged to the producer by a Redis that persists to its AOF, and a
    # worker (5 s visibility timeout) sending it
    count = pick(100, 1000)
    handler = smtp_server.handler
    publisher = Celery(broker=aof_redis.url, set_as_current=False)
    publisher.conf.task_serializer = "json"
    jobs: dict[str, list[str]] = {}
    with publisher.producer_or_acquire() as producer:
        for i in range(count):
            job_id, to = f"aof-{aof_redis.fsync}-{i}", [f"aof{i}@example.com"]
            kwargs = {"to": to, "subject": f"AOF {i}", "text": "body"}
            publisher.send_task(
                "emailq.send", kwargs=kwargs, task_id=job_id, queue="normal", producer=producer
            )
            jobs[job_id] = to
    env = {"VISIBILITY_TIMEOUT_S": "5", **FAST_RETRIES}
    worker = start_worker(smtp_server, redis_url=aof_redis.url, concurrency=THREADS, **env)
    kills = pick(1, 3)
    downtime = 0.0
    killed_at = at_kill = 0.0
    logs: list[str] = []
    exits: list[int | None] = []

    # When Redis is SIGKILLed mid-batch (long form: at 1/4, 2/4 and 3/4 of it) and started
    # again from the same directory each time
    for k in range(1, kills + 1):
        wait_for_messages(smtp_server, count * k // 4, 180)
        aof_redis.kill()
        killed_at = time.monotonic()
        at_kill = len(handler.messages)
        time.sleep(1)
        aof_redis.start()
        downtime += time.monotonic() - killed_at
        # A supervisor's part: a worker that exited on the connection loss is started again
        time.sleep(3)
        if worker.process is not None and worker.process.poll() is not None:
            exits.append(worker.process.returncode)
            logs.append(worker.log())
            worker = start_worker(smtp_server, redis_url=aof_redis.url, concurrency=THREADS, **env)
    result = harness.settle(
        jobs, lambda: list(handler.messages), aof_redis.client(), timeout=pick(120, 400),
        quiet_s=3,
    )  # fmt: skip

    # Then no acknowledged job is lost, none is sent twice, and no job was ever popped off
    # a queue without being recorded as unacknowledged in the same step
    log = "".join(logs) + worker.log()
    gap = harness.popped_never_unacked(aof_redis.directory)
    result.figures.update(
        kills=kills,
        delivered_at_last_kill=at_kill,
        redis_down=downtime,
        recovery_after_last_kill=harness.last_delivery(handler.messages) - killed_at,
        outcomes_kept_in_memory=log.count("outcome not written, Redis is away"),
        popped_never_unacked=len(gap),
        redis_data_lost_alarm=log.count("Redis lost its data"),
        worker_exits=len(exits),
    )
    result.report(f"redis-sigkill-aof-{aof_redis.fsync}[{FORM}]")
    counts = result.counts
    assert gap == set()
    assert counts["lost"] == 0, result.ids("lost")
    assert counts["pending"] == 0, result.ids("pending")
    assert counts["dead_by_reason"] == {}
    assert counts["duplicated"] == 0, result.ids("duplicated")
    assert counts["delivered"] == count
    assert "Redis lost its data" not in log
    # and the worker rode out every connection loss: no supervisor was needed
    assert exits == [], "".join(logs)[-6000:]
