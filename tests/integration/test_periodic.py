"""The beat jobs through a real worker: monitoring alerts with a cooldown, the daily report."""

import time

from emailq.worker.app import app


def test_monitoring_alerts_once_per_check_within_the_cooldown(smtp_server, start_worker):
    # Given thresholds every machine exceeds, and two workers running the check at once
    env = {"ALERT_TO": "ops@example.com", "ALERT_CPU_PERCENT": "0", "ALERT_MEMORY_PERCENT": "0",
           "ALERT_DISK_PERCENT": "0"}  # fmt: skip
    start_worker(smtp_server, **env)
    start_worker(smtp_server, **env)

    for _ in range(4):
        app.send_task("emailq.check_system", queue="normal")

    # Then CPU, memory and disk alert once each, as high-priority mail
    received = smtp_server.handler.wait_for(3, timeout=60)
    time.sleep(3)  # every run has finished its 1 s CPU reading by now
    subjects = sorted(m.message["Subject"] for m in smtp_server.messages)
    assert len(subjects) == 3, subjects
    assert [s.split(" usage")[0] for s in subjects] == [
        "[CRITICAL] CPU", "[CRITICAL] Disk", "[CRITICAL] Memory",
    ]  # fmt: skip
    assert all(m.rcpt_tos == ["ops@example.com"] for m in received)


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
