"""Each host watches itself: one elected process per host, its own thresholds, alerts on high."""

import pytest

from emailq.config import load_settings
from emailq.core.job import EmailJob
from emailq.worker.monitor import Monitor


@pytest.fixture
def settings(monkeypatch):
    monkeypatch.setenv("ALERT_TO", "ops@example.com")
    monkeypatch.setenv("ALERT_CPU_PERCENT", "50")
    monkeypatch.setenv("ALERT_MEMORY_PERCENT", "99")
    monkeypatch.setenv("ALERT_DISK_PERCENT", "99")
    return load_settings()


def monitor(session_redis, settings, host="web-1", **figures: float) -> tuple[Monitor, list]:
    queued: list[EmailJob] = []

    def publish(job: EmailJob) -> str:
        queued.append(job)
        return f"alert-{len(queued)}"

    read = {"CPU": 10.0, "Memory": 10.0, "Disk": 10.0, **figures}
    return Monitor(session_redis.client(), settings, publish, host=host,
                   read=lambda _path: read), queued  # fmt: skip


def test_one_process_per_host_takes_the_readings_and_another_takes_over(session_redis, settings):
    # Given three worker processes, two on web-1 and one on web-2
    first, _ = monitor(session_redis, settings)
    second, _ = monitor(session_redis, settings)
    other_host, _ = monitor(session_redis, settings, host="web-2")

    # Then web-1 elects one of its two, and web-2 its own, and they stay elected
    assert [first.elected(), second.elected(), other_host.elected()] == [True, False, True]
    assert [first.elected(), second.elected()] == [True, False]

    # And when the elected one stops, the other takes over at once
    first.stop()
    assert second.elected()


def test_a_figure_over_this_hosts_threshold_queues_one_high_alert_naming_host_and_figure(
    session_redis, settings
):
    # Given web-1's CPU at 93% against its own ALERT_CPU_PERCENT=50, memory and disk under
    watcher, queued = monitor(session_redis, settings, CPU=93.0)

    # When it checks twice
    first = watcher.check()
    second = watcher.check()

    # Then one alert is queued (the second is cooling down), on high, naming host and figure
    assert first == ["alert-1"] and second == []
    [job] = queued
    assert job.priority == "high"
    assert list(job.to) == ["ops@example.com"]
    assert "web-1" in job.subject and "CPU" in job.subject
    assert "93%" in job.text and "50%" in job.text


def test_a_process_not_elected_takes_no_readings(session_redis, settings):
    elected, _ = monitor(session_redis, settings, CPU=93.0)
    assert elected.elected()
    follower, queued = monitor(session_redis, settings, CPU=93.0)

    assert follower.check() == [] and queued == []
