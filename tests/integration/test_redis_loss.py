"""Redis dies between the SMTP server's 250 and the ledger write: the message goes out once."""

import shutil
import time

import pytest
import redis
from celery import Celery

from emailq.core.keys import JOB
from tests.support.faults import FAST_RETRIES
from tests.support.redis import RedisServer

pytestmark = pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")


def test_a_send_whose_ledger_write_met_a_dead_redis_is_not_sent_again(
    smtp_server, start_worker, tmp_path
):
    # Given a worker on a durable Redis, and a server that sees Redis die while it takes DATA
    durable = RedisServer(tmp_path, fsync="always").start()
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
