"""A good guest in the host application: our app is never the host's, our handlers act only
for our worker, and an application that enqueues needs REDIS_URL and nothing else."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from emailq.core.keys import DELAYED, EVENTS
from tests.support.faults import FAST_RETRIES, dead_letters
from tests.support.worker import WorkerProcess

EMAILQ = str(Path(sys.executable).with_name("emailq"))


def _bare_env(**extra: str) -> dict[str, str]:
    """Only what a process needs to start: none of the test session's settings."""
    keep = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    return {**keep, **extra}


def _python(code: str, *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip


def test_importing_emailq_leaves_the_hosts_current_app_and_shared_tasks_alone(
    session_redis, tmp_path
):
    # Given a host application with its own Celery app and a shared_task
    code = """
        from celery import Celery, current_app, shared_task

        host = Celery("host", broker="memory://")

        @shared_task(name="host.ping")
        def ping():
            return "pong"

        import emailq
        import emailq.worker
        from emailq import enqueue_email

        enqueue_email.delay(to="ann@example.com", subject="Hi", text="Hello")
        host.finalize()
        print(current_app.main, ping.app.main, "emailq.send" in host.tasks,
              "host.ping" in emailq.worker.app.tasks)
    """
    out = _python(code, cwd=tmp_path, env=_bare_env(REDIS_URL=session_redis.url))

    # Then the host's app stays current and keeps its task; ours stay out of it
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["host", "host", "False", "False"]


def test_an_application_enqueues_with_redis_url_alone_and_never_opens_the_database(
    session_redis, tmp_path
):
    # Given an application process with REDIS_URL and nothing else (no sender, no database)
    data_dir = tmp_path / "data"
    code = """
        from emailq import InvalidEmail, enqueue_email
        try:
            enqueue_email.delay(to="not an address", subject="s", text="t")
        except InvalidEmail as exc:
            assert isinstance(exc, ValueError)
        try:
            enqueue_email(to="ann@example.com", subject="s", text="t")
        except TypeError as exc:
            assert ".delay" in str(exc)
        else:
            raise SystemExit("a direct call sent mail from inside the application")
        print(enqueue_email.delay(to="ann@example.com", subject="Hi", text="Hello").id)
    """
    env = _bare_env(REDIS_URL=session_redis.url, EMAILQ_DATA_DIR=str(data_dir))
    out = _python(code, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()

    # Then the job and its "queued" record wait in Redis; no file was written anywhere
    assert session_redis.client().llen("normal") == 1
    [event] = [json.loads(e) for e in session_redis.client().lrange(EVENTS, 0, -1)]
    assert (event["kind"], event["job_id"]) == ("queued", job_id)
    assert not data_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []

    # And the CLI, from another directory, reports it as queued
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    status = subprocess.run(
        [EMAILQ, "status", job_id, "--json"], cwd=elsewhere, env=env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "queued"
    assert (data_dir / "emailq.sqlite3").exists()


def test_a_hosts_own_worker_importing_emailq_needs_none_of_our_settings_and_moves_nothing(
    session_redis, tmp_path
):
    # Given a host application whose Celery worker imports emailq and emailq.worker
    (tmp_path / "hostapp.py").write_text(
        textwrap.dedent(
            f"""
            from celery import Celery
            import emailq
            import emailq.worker

            app = Celery("host", broker="{session_redis.url.removesuffix("/0")}/1")
            """
        )
    )
    # ...and one of our jobs parked and already due
    session_redis.client().zadd(DELAYED, {json.dumps({"task_id": "x", "kwargs": {}}): 0})
    env = _bare_env(REDIS_URL=session_redis.url, PYTHONPATH=str(tmp_path))
    worker = WorkerProcess(env, tmp_path / "host-worker.log")
    worker.command[worker.command.index("emailq.worker")] = "hostapp"

    # When it starts (without EMAIL_FROM, which our own worker refuses to start without)
    worker.start()
    try:
        time.sleep(2)  # several ticks of a mover, had one started
        # Then our mover never ran in it, and our tasks are not its tasks
        assert session_redis.client().zcard(DELAYED) == 1
        assert "emailq.send" not in worker.log()
    finally:
        worker.stop()


def test_a_redis_error_in_the_delivery_path_is_never_crashed_and_spends_no_budget(
    smtp_server, start_worker, session_redis
):
    # Given a worker with no retry budget at all, and a job whose ledger entry Redis refuses
    # (a key of the wrong type: every ledger command on it fails with WRONGTYPE)
    from emailq.producer import enqueue_email

    start_worker(smtp_server, **{**FAST_RETRIES, "MAX_RETRIES": "0"})
    client = session_redis.client()
    job_id = "redis-error-job"
    client.set(f"emailq:job:{job_id}", "not a hash")

    result = enqueue_email.apply_async(
        kwargs={"to": "ann@example.com", "subject": "s", "text": "t"}, task_id=job_id
    )

    # Then the job waits, neither dead-lettered nor sent, while Redis keeps refusing
    with pytest.raises(TimeoutError):
        dead_letters(client, timeout=5)
    assert smtp_server.messages == []

    # And once Redis answers for that key again, the job goes out, its budget intact
    client.delete(f"emailq:job:{job_id}")
    assert result.get(timeout=30)["accepted"] == ["ann@example.com"]
    assert client.llen("dead_letter") == 0
