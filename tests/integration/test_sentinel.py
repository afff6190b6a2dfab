"""Behind Redis Sentinel: Flower's Broker page, its metrics and ``emailq queues`` find the master.

A private redis-server is the master and a private redis-server in sentinel mode watches it
as ``mymaster``; every process gets ``REDIS_URL=sentinel://...`` only.
"""

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.integration.test_tools import _wait_listening
from tests.support import free_port
from tests.support.redis import RedisServer

pytestmark = pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")

EMAILQ = str(Path(sys.executable).with_name("emailq"))
AUTH = "Basic " + base64.b64encode(b"admin:pw-123").decode()


@pytest.fixture
def sentinel_url(tmp_path: Path) -> Iterator[tuple[str, RedisServer]]:
    """A master and one sentinel watching it; yields the sentinel URL and the master."""
    master = RedisServer(tmp_path / "master").start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"  # a sentinel rewrites its file: it must be its own
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
    )
    sentinel = subprocess.Popen(
        [shutil.which("redis-server"), str(conf), "--sentinel"], stdout=subprocess.DEVNULL
    )
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.sentinel_get_master_addr_by_name("mymaster"):
                    break
            except redis.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the sentinel never named the master"
            time.sleep(0.1)
        yield f"sentinel://127.0.0.1:{port}/0", master
    finally:
        sentinel.terminate()
        sentinel.wait(10)
        master.stop()


def _get(url: str) -> str:
    request = urllib.request.Request(url, headers={"Authorization": AUTH})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def test_the_broker_page_metrics_and_queues_read_the_master_through_the_sentinel(
    sentinel_url: tuple[str, RedisServer], tmp_path: Path
) -> None:
    # Given two items waiting in `normal` on the master, known to processes only as a
    # sentinel URL
    url, master = sentinel_url
    master.client().lpush("normal", b"one", b"two")
    env = {**os.environ, "REDIS_URL": url, "REDIS_SENTINEL_MASTER": "mymaster",
           "FLOWER_BASIC_AUTH": "admin:pw-123"}  # fmt: skip

    # When Flower runs against it
    port = free_port()
    flower = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "emailq.worker", "flower", f"--port={port}",
         "--address=127.0.0.1"],
        cwd=tmp_path, env=env, stdout=(tmp_path / "flower.log").open("w"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait_listening(port, flower)
        page = _get(f"http://127.0.0.1:{port}/broker")
        metrics = _get(f"http://127.0.0.1:{port}/metrics")
    finally:
        flower.terminate()
        try:
            flower.wait(20)
        except subprocess.TimeoutExpired:  # a slow stop under load is not what this tests
            flower.kill()
            flower.wait()

    # Then the Broker page lists the queues with the master's depths
    rows = re.findall(r'<tr id="(\w+)">\s*<td>\w+</td>\s*<td[^>]*>(\d+)</td>', page)
    assert ("normal", "2") in rows and ("high", "0") in rows, page[page.find("<tbody>") :][:1500]
    # and the metrics read the master too
    assert 'emailq_queue_depth{queue="normal"} 2.0' in metrics

    # And `emailq queues` does the same
    out = subprocess.run(
        [EMAILQ, "queues", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["normal"]["depth"] == 2
