"""``emailq worker`` (what ``make worker`` runs): processes, connection shares, restarts, stop."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from emailq.producer import enqueue_email
from tests.integration.conftest import smtp_env

EMAILQ = str(Path(sys.executable).with_name("emailq"))


def eventually(check: Callable[[], object], timeout: float = 60.0) -> object:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"not true after {timeout}s: {check}"
        time.sleep(0.2)
    return value


@pytest.fixture
def supervisor(smtp_server, session_redis, ca_file, tmp_path) -> Iterator[subprocess.Popen]:
    env = {**os.environ, "REDIS_URL": session_redis.url, "SMTP_MAX_CONNECTIONS": "8",
           **smtp_env(smtp_server, ca_file)}  # fmt: skip
    log = (tmp_path / "supervisor.log").open("w")
    process = subprocess.Popen(
        [EMAILQ, "worker", "--processes", "2", "--threads", "2"],
        env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    process.log_path = tmp_path / "supervisor.log"  # type: ignore[attr-defined]
    yield process
    if process.poll() is None:
        process.terminate()
        process.wait(60)
    for child in psutil.Process().children(recursive=True):  # nothing may outlive the test
        if "emailq.worker" in " ".join(child.cmdline()):
            child.kill()


def workers(supervisor: subprocess.Popen) -> list[psutil.Process]:
    """The supervisor's celery worker processes (their main processes, not pool threads)."""
    try:
        return [c for c in psutil.Process(supervisor.pid).children() if c.is_running()]
    except psutil.NoSuchProcess:
        return []


def test_emailq_worker_runs_its_processes_restarts_a_dead_one_and_stops_warmly(
    supervisor, smtp_server
):
    # Given `emailq worker --processes 2` with SMTP_MAX_CONNECTIONS=8 for the host
    first = eventually(lambda: len(workers(supervisor)) == 2 and workers(supervisor))

    # Then each process has its own node name and half the connections
    for child in first:
        cmdline = " ".join(child.cmdline())
        assert "-P threads -c 2" in cmdline
        # without gossip (every worker reading every other's task events) and mingle
        assert "--without-gossip" in cmdline and "--without-mingle" in cmdline
        assert child.environ()["SMTP_MAX_CONNECTIONS"] == "4"
        # and two malloc arenas unless the operator says otherwise (flat RSS)
        assert child.environ()["MALLOC_ARENA_MAX"] == os.environ.get("MALLOC_ARENA_MAX", "2")
    names = sorted(c.cmdline()[c.cmdline().index("-n") + 1] for c in first)
    assert names == ["worker1@%h", "worker2@%h"]

    # and they send
    results = [enqueue_email.delay(to=f"u{i}@example.com", subject=f"{i}", text="x")
               for i in range(6)]  # fmt: skip
    for result in results:
        result.get(timeout=60)

    # When one process is killed outright
    victim = first[0]
    victim.kill()

    # Then it is started again, and the jobs still go out
    eventually(lambda: len(workers(supervisor)) == 2 and victim.pid not in
               {c.pid for c in workers(supervisor)})  # fmt: skip
    enqueue_email.delay(to="after@example.com", subject="after", text="x").get(timeout=60)
    log = supervisor.log_path.read_text()
    assert "exited with -9" in log and "starting it again" in log

    # When the supervisor gets SIGTERM
    supervisor.send_signal(signal.SIGTERM)

    # Then every process shuts down warmly and the supervisor exits 0
    assert supervisor.wait(60) == 0, supervisor.log_path.read_text()[-3000:]
    assert all(not c.is_running() for c in workers(supervisor))
    log = supervisor.log_path.read_text()
    assert "warm shutdown of 2 process(es)" in log
    assert "every process has stopped" in log
    assert len(smtp_server.messages) == 7
