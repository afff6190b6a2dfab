"""The development tools around the pipeline: the sink and the demo (compose: test_compose.py)."""

import os
import smtplib
import subprocess
import sys
import time
from pathlib import Path

from tests.support import free_port
from tests.support.worker import ROOT

BIN = Path(sys.executable).parent


def _wait_listening(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read() if process.stdout else "exited"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {port}")


def test_sink_writes_each_message_as_an_eml_file(tmp_path):
    port, outbox = free_port(), tmp_path / "outbox"
    sink = subprocess.Popen(
        [BIN / "emailq", "sink", "--port", str(port), "--outbox", str(outbox)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait_listening(port, sink)
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail(
                "a@example.com", ["b@example.com", "hidden@example.com"],
                b"Subject: hello\r\nTo: b@example.com\r\n\r\nbody\r\n",
            )  # fmt: skip
    finally:
        sink.terminate()
        sink.wait(10)
    [eml] = outbox.glob("*.eml")
    content = eml.read_bytes()
    assert b"Subject: hello" in content and b"body" in content
    assert b"X-Envelope-To: <b@example.com>, <hidden@example.com>" in content
    assert sink.returncode == 0


def _demo(redis_url: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "scripts/demo.py"], cwd=ROOT, env={**os.environ, "REDIS_URL": redis_url},
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip


def test_demo_delivers_every_job_and_exits_zero(session_redis):
    demo = _demo(session_redis.url)

    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "23 of 23 delivered; 23 new .eml files" in demo.stdout
    assert session_redis.client().llen("normal") == 0


def test_demo_starts_a_private_redis_when_none_answers():
    demo = _demo(f"redis://127.0.0.1:{free_port()}/0")

    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "Started a private redis-server" in demo.stdout
