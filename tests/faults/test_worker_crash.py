"""A worker dies, or is stopped, in the middle of a batch; a new one finishes the batch.

Real processes: the session redis-server, an aiosmtpd relay, ``celery -A emailq.worker
worker`` (4 threads). The relay takes 20 ms to answer DATA, as a real one takes a moment,
so a kill can land between the message's final dot and the 250.

No job can be lost between the queue and ``unacked``: the worker takes a job and records
it as unacknowledged in one Redis script (``emailq.core.fetch``), where kombu's own
transport needs two round trips and lost the job of a worker killed between them.

With ``-P prefork`` each job runs in a pool child process, which can die alone (the OOM
killer, a segfault in a C extension); the worker then hands the job back to the queue.

Short form by default; ``FAULTS_LONG=1`` (``make faults``) runs the long form (see
``tests/faults/scale.py``): 60 jobs short, 500 long. Each test prints one ``FAULT`` line
(``-s`` shows it) with the counts of ``tests/faults/harness.py``.
"""

import re
import signal
import time

import psutil

from emailq.producer import enqueue_email
from tests.faults import harness
from tests.faults.scale import FORM, pick, timeout
from tests.support.redis import RedisServer
from tests.support.smtp import SMTPTestServer
from tests.support.worker import WorkerProcess

THREADS = 4
PREFORK_CHILDREN = 2
# Celery's own name for the prefork pool. ``-P prefork`` cannot be told from the option's
# default, so celery keeps the configured ``worker_pool`` ("threads") and runs threads.
PREFORK = "processes"
VISIBILITY_TIMEOUT_S = 5
RESTORE_SWEEP_S = 5  # unacked_restore_interval (emailq.core.celeryconfig)
LOCK_TTL_S = 15  # emailq.worker.locks.LOCK_TTL_S
DOCUMENTED_WORST_CASE_S = VISIBILITY_TIMEOUT_S + RESTORE_SWEEP_S + LOCK_TTL_S


def publish(count: int, tag: str) -> dict[str, list[str]]:
    """``count`` jobs through the real producer; every third has two recipients."""
    jobs: dict[str, list[str]] = {}
    for i in range(count):
        to = [f"{tag}{i}@example.com"]
        if i % 3 == 0:
            to.append(f"{tag}{i}-cc@example.com")
        jobs[enqueue_email.delay(to=to, subject=f"{tag} {i}", text="body").id] = to
    return jobs


def wait_until_received(smtp_server: SMTPTestServer, count: int, timeout: float) -> None:
    """Poll, rather than wake on the message itself, so the fault that follows lands at a
    moment unrelated to any one send (waking on an arrival would strike every time just
    between the server's 250 and the worker reading it)."""
    deadline = time.monotonic() + timeout
    while len(smtp_server.messages) < count:
        assert time.monotonic() < deadline, f"{len(smtp_server.messages)} of {count} received"
        time.sleep(0.05)


def first_copy_at(messages: list, job_ids: set[str]) -> dict[str, float]:
    """When each of ``job_ids`` first arrived."""
    first: dict[str, float] = {}
    for message in messages:
        job_id = harness.job_of(message)
        if job_id in job_ids and job_id not in first:
            first[job_id] = message.at
    return first


def pool_children(worker: WorkerProcess, count: int, timeout: float) -> list[psutil.Process]:
    """The prefork pool's child processes, once ``count`` of them run. The worker's own
    process is ``python -m celery``; its children are forks of it, the same command line."""
    assert worker.process is not None
    main = psutil.Process(worker.process.pid)
    deadline = time.monotonic() + timeout
    while True:
        children = []
        for child in main.children():
            try:
                if child.status() != psutil.STATUS_ZOMBIE and "celery" in child.cmdline():
                    children.append(child)
            except psutil.NoSuchProcess:
                pass
        if len(children) >= count:
            return sorted(children, key=lambda c: c.pid)
        assert time.monotonic() < deadline, f"{len(children)} of {count} pool processes"
        time.sleep(0.1)


@timeout
def test_a_worker_killed_mid_batch_loses_nothing_and_a_new_worker_finishes_the_batch(
    smtp_server: SMTPTestServer, start_worker, session_redis: RedisServer
) -> None:
    # Given a batch of jobs, and a worker with a 5 s visibility timeout sending them
    count = pick(60, 500)
    handler = smtp_server.handler
    handler.data_delay_s = 0.02
    client = session_redis.client()
    jobs = publish(count, "kill")
    env = {"VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S)}
    worker = start_worker(smtp_server, concurrency=THREADS, **env)
    wait_until_received(smtp_server, count // 3, timeout=120)

    # When the whole worker is SIGKILLed a third of the way through, and a new one starts
    worker.kill()
    killed_at = time.monotonic()
    inflight = harness.unacked_ids(client)
    before = harness.tally(jobs, list(handler.messages), client)
    undelivered = {j for j in inflight if not before.outcomes[j].delivered}
    second = start_worker(smtp_server, concurrency=THREADS, **env)
    result = harness.settle(
        jobs, lambda: list(handler.messages), client, timeout=pick(120, 300), quiet_s=2
    )

    # Then nothing is lost or dead; a duplicate is possible only for a job that was mid-DATA
    messages = list(handler.messages)
    back = first_copy_at([m for m in messages if m.at > killed_at], undelivered)
    result.figures.update(
        delivered_at_kill=before.counts["delivered"],
        in_flight=len(inflight),
        in_flight_recovery=max(back.values(), default=killed_at) - killed_at,
        recovery=harness.last_delivery(messages) - killed_at,
        documented_worst_case=float(DOCUMENTED_WORST_CASE_S),
        busy_deferrals=second.log().count("is being delivered by another worker"),
        popped_never_unacked=len(gap := harness.never_started(client, result.ids("lost"))),
    )
    result.report(f"worker-sigkill[{FORM}]")
    counts = result.counts
    assert counts["lost"] == 0, (result.ids("lost"), "never started:", gap)
    assert counts["pending"] == 0, result.ids("pending")
    assert counts["dead_by_reason"] == {}
    assert counts["delivered"] == count
    # At most one message per thread can be between the server's 250 and the ledger write.
    assert counts["duplicated"] <= THREADS, result.ids("duplicated")
    assert set(result.ids("duplicated")) <= inflight
    assert set(back) == undelivered


@timeout
def test_a_warm_shutdown_mid_batch_loses_and_duplicates_nothing(
    smtp_server: SMTPTestServer, start_worker, session_redis: RedisServer
) -> None:
    # Given a batch of jobs and a worker sending them
    count = pick(60, 500)
    handler = smtp_server.handler
    handler.data_delay_s = 0.02
    client = session_redis.client()
    jobs = publish(count, "term")
    worker = start_worker(smtp_server, concurrency=THREADS)
    wait_until_received(smtp_server, count // 3, timeout=120)

    # When it gets SIGTERM a third of the way through, and a new worker starts after it exits
    stopping = time.monotonic()
    worker.stop()
    stopped_after = time.monotonic() - stopping
    assert worker.process is not None
    exit_code = worker.process.returncode
    left_unacked = len(harness.unacked_ids(client))
    before = harness.tally(jobs, list(handler.messages), client)
    start_worker(smtp_server, concurrency=THREADS)
    result = harness.settle(
        jobs, lambda: list(handler.messages), client, timeout=pick(90, 240), quiet_s=2
    )

    # Then the running jobs finished, the rest went back to the queue, and each went out once
    result.figures.update(
        delivered_at_stop=before.counts["delivered"],
        shutdown=stopped_after,
        exit_code=exit_code,
        unacked_after_stop=left_unacked,
    )
    result.report(f"worker-sigterm[{FORM}]")
    counts = result.counts
    assert exit_code == 0, worker.log()[-3000:]
    assert left_unacked == 0
    assert counts["lost"] == 0, result.ids("lost")
    assert counts["pending"] == 0, result.ids("pending")
    assert counts["dead_by_reason"] == {}
    assert counts["duplicated"] == 0, result.ids("duplicated")
    assert counts["delivered"] == count


@timeout
def test_a_prefork_child_killed_mid_send_loses_nothing_and_the_worker_carries_on(
    smtp_server: SMTPTestServer, start_worker, session_redis: RedisServer
) -> None:
    # Given a batch of jobs, and a prefork worker (two child processes) sending them
    count = pick(30, 300)
    handler = smtp_server.handler
    handler.data_delay_s = 0.05
    client = session_redis.client()
    jobs = publish(count, "child")
    env = {"VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S)}
    worker = start_worker(smtp_server, concurrency=PREFORK_CHILDREN, pool=PREFORK, **env)
    assert worker.process is not None
    assert f"concurrency: {PREFORK_CHILDREN} (prefork)" in worker.log()
    children = pool_children(worker, PREFORK_CHILDREN, timeout=30)
    wait_until_received(smtp_server, count // 3, timeout=120)

    # When one pool child is SIGKILLed a third of the way through; the worker itself lives on
    victim = children[0]
    taken = harness.unacked_ids(client)
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    # Read again at once: the child may have been given a job between the read and the kill
    inflight = taken | harness.unacked_ids(client)
    before = harness.tally(jobs, list(handler.messages), client)
    undelivered = {j for j in inflight if not before.outcomes[j].delivered}
    result = harness.settle(
        jobs, lambda: list(handler.messages), client, timeout=pick(120, 300), quiet_s=2
    )

    # Then every job went out, none is dead, and only the child's own job may go out twice
    messages = list(handler.messages)
    back = first_copy_at([m for m in messages if m.at > killed_at], undelivered)
    worker_alive = worker.process.poll() is None
    replaced = [c.pid for c in pool_children(worker, PREFORK_CHILDREN, timeout=30)]
    log = worker.log()
    held = set(re.findall(r"job (\S+) is being delivered by another worker", log))
    result.figures.update(
        delivered_at_kill=before.counts["delivered"],
        in_flight=len(inflight),
        in_flight_recovery=max(back.values(), default=killed_at) - killed_at,
        recovery=harness.last_delivery(messages) - killed_at,
        documented_worst_case=float(DOCUMENTED_WORST_CASE_S),
        busy_deferrals=log.count("is being delivered by another worker"),
        worker_alive=worker_alive,
    )
    result.report(f"prefork-child-sigkill[{FORM}]")
    counts = result.counts
    assert worker_alive, log[-3000:]
    assert victim.pid not in replaced  # the pool started a new child in its place
    assert counts["lost"] == 0, result.ids("lost")
    assert counts["pending"] == 0, result.ids("pending")
    assert counts["dead_by_reason"] == {}, log[-3000:]
    assert counts["delivered"] == count
    # The dead child's job is the one whose lock nobody released (the busy deferrals name it);
    # a child runs one job at a time, so only it can have been between the 250 and the ledger.
    assert len(held) <= 1 and held <= inflight, (held, inflight)
    assert counts["duplicated"] <= 1, result.ids("duplicated")
    assert set(result.ids("duplicated")) <= held
    assert set(back) == undelivered
