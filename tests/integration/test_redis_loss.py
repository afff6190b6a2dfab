"""Redis dies between the SMTP server's 250 and the ledger write: the message goes out once."""

import os
import shutil
import signal
import subprocess
import time

import pytest
import redis
from celery import Celery

from emailq.core.keys import JOB
from tests.support import free_port
from tests.support.faults import FAST_RETRIES

pytestmark = pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")


class DurableRedis:
    """A redis-server that writes every command to its AOF before replying."""

    def __init__(self, directory) -> None:
        self.directory, self.port = directory, free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "DurableRedis":
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()


def test_a_send_whose_ledger_write_met_a_dead_redis_is_not_sent_again(
    smtp_server, start_worker, tmp_path
):
    # Given a worker on a durable Redis, and a server that sees Redis die while it takes DATA
    durable = DurableRedis(tmp_path).start()
    try:
        start_worker(smtp_server, redis_url=durable.url, **FAST_RETRIES)
        handler = smtp_server.handler
        accept = handler.handle_DATA

        async def kill_redis_then_accept(server, session, envelope):
            durable.kill()
            return await accept(server, session, envelope)

        handler.handle_DATA = kill_redis_then_accept
        publisher = Celery(broker=durable.url, set_as_current=False)
        publisher.conf.task_serializer = "json"
        kwargs = {"to": ["ann@example.com"], "subject": "Once", "text": "only once"}
        publisher.send_task("emailq.send", kwargs=kwargs, task_id="once-job", queue="normal")

        # When the server has the message and Redis comes back a moment later
        handler.wait_for(1, timeout=30)
        handler.handle_DATA = accept
        time.sleep(1)
        durable.start()

        # Then the worker writes the outcome it kept, and the job is never sent again
        client = redis.Redis(port=durable.port)
        deadline = time.monotonic() + 20
        while client.hget(JOB + "once-job", "final") != b"sent":
            assert time.monotonic() < deadline, client.hgetall(JOB + "once-job")
            time.sleep(0.2)
        time.sleep(8)  # the job's retry (5 s) has run and found it sent
        assert len(handler.messages) == 1
        assert client.hget(JOB + "once-job", "d:ann@example.com") == b"1"
    finally:
        durable.kill()
