"""Flower against a real worker: authenticated, showing the work, with Prometheus metrics."""

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from emailq.producer import enqueue_email
from tests.integration.test_tools import _wait_listening
from tests.support import free_port
from tests.support.worker import ROOT

AUTH = "Basic " + base64.b64encode(b"admin:pw-123").decode()


def _get(url: str, *, auth: bool = True) -> str:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", AUTH)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


@pytest.fixture
def flower(session_redis):
    port = free_port()
    env = {**os.environ, "REDIS_URL": session_redis.url, "FLOWER_BASIC_AUTH": "admin:pw-123"}
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "emailq.worker", "flower", f"--port={port}",
         "--address=127.0.0.1"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _wait_listening(port, process)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(20)


def test_flower_shows_the_workers_tasks_without_bodies_and_counts_them(
    flower, smtp_server, start_worker
):
    # Given Flower watching a real worker
    start_worker(smtp_server)
    secret_body = "one-time code 991122"

    result = enqueue_email.delay(to="ann@example.com", subject="Your code", text=secret_body)
    result.get(timeout=30)

    # Then anonymous requests are refused
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        _get(f"{flower}/api/tasks", auth=False)
    assert anonymous.value.code == 401

    # And with credentials the task is listed, summarised, without its body
    # Flower learns of the success from an event that can trail the result: wait for it.
    deadline = time.monotonic() + 30
    while True:
        task = json.loads(_get(f"{flower}/api/tasks")).get(result.id, {})
        if task.get("state") == "SUCCESS" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert task["name"] == "emailq.send" and task["state"] == "SUCCESS"
    assert "ann@example.com" in task["kwargs"] and "Your code" in task["kwargs"]
    assert secret_body not in json.dumps(task)
    assert "Your code" in _get(f"{flower}/task/{result.id}")

    # And Prometheus metrics count the task's events
    metrics = _get(f"{flower}/metrics")
    assert 'flower_events_total{task="emailq.send",type="task-succeeded"' in metrics


def test_flower_runs_open_only_with_the_explicit_development_flag(session_redis):
    port = free_port()
    env = {**os.environ, "REDIS_URL": session_redis.url, "FLOWER_INSECURE_NO_AUTH": "true"}
    env.pop("FLOWER_BASIC_AUTH", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "emailq.worker", "flower", f"--port={port}",
         "--address=127.0.0.1"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_listening(port, process)
        assert "Flower" in _get(f"http://127.0.0.1:{port}/", auth=False)
    finally:
        process.terminate()
        process.wait(20)
