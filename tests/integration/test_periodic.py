"""Through real workers: each host's monitoring alerts with a cooldown, the daily report."""

import os
import socket
import subprocess
import sys
import time

from emailq.worker.app import app


def test_each_host_alerts_once_per_check_from_one_of_its_workers(smtp_server, start_worker):
    # Given two workers on this host, thresholds every machine exceeds, checks every second
    env = {"ALERT_TO": "ops@example.com", "ALERT_CPU_PERCENT": "0", "ALERT_MEMORY_PERCENT": "0",
           "ALERT_DISK_PERCENT": "0", "ALERT_CHECK_INTERVAL_S": "1"}  # fmt: skip
    first = start_worker(smtp_server, **env)
    second = start_worker(smtp_server, **env)

    # Then CPU, memory and disk alert once each, as high-priority mail naming this host
    received = smtp_server.handler.wait_for(3, timeout=60)
    time.sleep(4)  # several more rounds: the cooldown holds them
    subjects = sorted(m.message["Subject"] for m in smtp_server.messages)
    assert len(subjects) == 3, subjects
    assert [s.split(" usage")[0] for s in subjects] == [
        "[CRITICAL] CPU", "[CRITICAL] Disk", "[CRITICAL] Memory",
    ]  # fmt: skip
    assert all(socket.gethostname() in s for s in subjects), subjects
    assert all(m.rcpt_tos == ["ops@example.com"] for m in received)
    # and one worker took the readings: the host elected it
    logs = [first.log(), second.log()]
    assert sorted(log.count("alert ") > 0 for log in logs) == [False, True], logs


def test_the_daily_report_is_html_with_a_csv_attachment(smtp_server, start_worker):
    start_worker(smtp_server, REPORT_TO="manager@example.com")

    app.send_task("emailq.send_report", queue="normal")

    [received] = smtp_server.handler.wait_for(1, timeout=60)
    msg = received.message
    assert msg["Subject"].startswith("Email delivery report")
    assert "<table" in msg.get_body(("html",)).get_content()
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_filename().endswith(".csv")
    assert attachment.get_content().startswith("status,count")


def test_beat_starts_on_a_fresh_machine_and_creates_its_data_directory(session_redis, tmp_path):
    # Given an EMAILQ_DATA_DIR that does not exist yet
    data_dir = tmp_path / "new" / "emailq"
    env = {**os.environ, "REDIS_URL": session_redis.url, "EMAILQ_DATA_DIR": str(data_dir)}

    # When `make beat`'s command starts
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "emailq.worker", "beat", "--loglevel=INFO"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not list(data_dir.glob("celerybeat-schedule*")) and beat.poll() is None:
            assert time.monotonic() < deadline, "no schedule file after 30 s"
            time.sleep(0.2)
        # Then it runs, with its schedule file in the new directory
        assert beat.poll() is None, beat.communicate()[0][-3000:]
    finally:
        beat.terminate()
        beat.wait(20)
