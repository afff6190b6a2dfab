"""A Redis that comes back empty is noticed: logged at CRITICAL, and shown by `emailq check`."""

import os
import subprocess
import sys
import time
from pathlib import Path

from emailq.core.keys import MARKER

EMAILQ = str(Path(sys.executable).with_name("emailq"))


def test_a_redis_that_lost_its_data_is_logged_once_at_critical(
    smtp_server, start_worker, session_redis
):
    # Given a running worker, which planted the marker
    worker = start_worker(smtp_server)
    client = session_redis.client()
    assert client.exists(MARKER)
    check = [EMAILQ, "check"]
    env = {**os.environ, "COLUMNS": "200"}
    assert "its data kept since" in subprocess.run(check, env=env, capture_output=True,
                                                   text=True, timeout=60).stdout  # fmt: skip

    # When Redis loses everything (a restart without persistence looks the same)
    client.flushall()

    # Then the worker says so once, at CRITICAL, and plants the marker again
    deadline = time.monotonic() + 20
    while "Redis lost its data" not in worker.log():
        assert time.monotonic() < deadline, worker.log()[-2000:]
        time.sleep(0.2)
    time.sleep(6)  # another round of checks: no second report
    assert worker.log().count("Redis lost its data") == 1
    assert "CRITICAL" in next(line for line in worker.log().splitlines() if "lost its" in line)
    assert client.exists(MARKER)


def test_check_says_when_no_worker_has_marked_redis_yet(session_redis):
    out = subprocess.run(
        [EMAILQ, "check"], env={**os.environ, "COLUMNS": "200"}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip

    assert "! redis" in out.stdout and "no worker has started" in out.stdout
