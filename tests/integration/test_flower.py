"""Flower against a real worker: authenticated from any directory, showing the work, with
Prometheus metrics behind the same credentials."""

import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from emailq.producer import enqueue_email
from tests.integration.test_tools import _wait_listening
from tests.support import free_port

AUTH = "Basic " + base64.b64encode(b"admin:pw-123").decode()


def _get(url: str, *, auth: bool = True) -> str:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", AUTH)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def _start(port: int, env: dict[str, str], cwd, *, log=None) -> subprocess.Popen:
    # Started from a directory that is not the checkout: the rule ships in the package.
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "emailq.worker", "flower", f"--port={port}",
         "--address=127.0.0.1"],
        cwd=cwd, env=env, stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


@pytest.fixture
def start_flower(session_redis, tmp_path):
    started = []

    def start(**extra: str) -> str:
        port = free_port()
        env = {**os.environ, "REDIS_URL": session_redis.url, "FLOWER_BASIC_AUTH": "admin:pw-123"}
        env.update(extra)
        process = _start(port, env, tmp_path, log=(tmp_path / f"flower-{port}.log").open("w"))
        started.append(process)
        _wait_listening(port, process)
        return f"http://127.0.0.1:{port}"

    yield start
    for process in started:
        process.terminate()
        process.wait(20)


@pytest.fixture
def flower(start_flower):
    return start_flower()


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

    # And Prometheus metrics count the task's events, for the same credentials only
    metrics = _get(f"{flower}/metrics")
    assert 'flower_events_total{task="emailq.send",type="task-succeeded"' in metrics
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        _get(f"{flower}/metrics", auth=False)
    assert anonymous.value.code == 401


def test_metrics_are_open_to_a_scraper_only_when_explicitly_set(start_flower):
    flower = start_flower(FLOWER_METRICS_PUBLIC="true")

    assert "flower_events_total" in _get(f"{flower}/metrics", auth=False)
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        _get(f"{flower}/api/tasks", auth=False)
    assert anonymous.value.code == 401


# Every malformed form is refused in tests/unit/test_flower_auth.py; here, the real command.
@pytest.mark.parametrize("credentials", [None, " :pw-123"])
def test_flower_refuses_to_start_without_valid_credentials_from_any_directory(
    session_redis, tmp_path, credentials
):
    env = {**os.environ, "REDIS_URL": session_redis.url}
    env.pop("FLOWER_BASIC_AUTH", None)
    if credentials is not None:
        env["FLOWER_BASIC_AUTH"] = credentials

    flower = _start(free_port(), env, tmp_path)

    output, _ = flower.communicate(timeout=60)
    assert flower.returncode != 0
    assert "FLOWER_BASIC_AUTH" in output
    assert "Visit me" not in output


def test_flower_runs_open_only_with_the_explicit_development_flag(session_redis, tmp_path):
    port = free_port()
    env = {**os.environ, "REDIS_URL": session_redis.url, "FLOWER_INSECURE_NO_AUTH": "true"}
    env.pop("FLOWER_BASIC_AUTH", None)
    process = _start(port, env, tmp_path, log=(tmp_path / "flower.log").open("w"))
    try:
        _wait_listening(port, process)
        assert "Flower" in _get(f"http://127.0.0.1:{port}/", auth=False)
    finally:
        process.terminate()
        process.wait(20)


def test_the_broker_page_shows_the_queues_and_their_depth(flower, session_redis):
    # Given three jobs waiting in `normal` and none in `high` (no worker is running)
    for n in range(3):
        enqueue_email.delay(to="ann@example.com", subject=f"Job {n}", text="x")

    # When the operator opens the Broker page
    page = _get(f"{flower}/broker")

    # Then it answers (it was a 404: our transport gave the broker URL a scheme Flower does
    # not know), names the broker, and lists both queues with their depth
    assert f"redis://127.0.0.1:{session_redis.port}/0" in page
    rows = re.findall(r'<tr id="(\w+)">\s*<td>\w+</td>\s*<td[^>]*>(\d+)</td>', page)
    assert ("high", "0") in rows and ("normal", "3") in rows, page[page.find("<tbody>") :][:1500]


def test_metrics_include_the_backlog_read_from_redis(flower):
    # Given two jobs waiting in `normal`
    for n in range(2):
        enqueue_email.delay(to="ann@example.com", subject=f"Job {n}", text="x")

    # When Prometheus scrapes Flower
    metrics = _get(f"{flower}/metrics")

    # Then our figures are there beside Flower's own
    assert "emailq_redis_up 1.0" in metrics
    assert 'emailq_queue_depth{queue="normal"} 2.0' in metrics
    assert 'emailq_queue_depth{queue="dead_letter"} 0.0' in metrics
    assert 'emailq_jobs_total{outcome="sent",reason=""}' in metrics
    assert "emailq_relay_circuit_state{" in metrics
