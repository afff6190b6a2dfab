"""Tracking retention on SQLite and on this machine's PostgreSQL: the prune, beat's job, the CLI."""

import importlib
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from emailq.config import get_settings
from emailq.worker.app import app
from emailq.worker.cli import main
from emailq.worker.retention import count_stale, prune
from emailq.worker.tracking import TrackingStore, attempts, engine_for, ensure_schema, jobs

DAY_S = 86400
# The module, not the command of the same name that `emailq.worker.cli` exports.
PRUNE_CLI = importlib.import_module("emailq.worker.cli.prune")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A fresh tracking store, on SQLite and on PostgreSQL (``database_url``)."""
    created = engine_for(database_url)
    ensure_schema(created)
    yield created
    created.dispose()


def track(engine: Engine, job_id: str, *, created_days_ago: float, changed_days_ago: float) -> None:
    """A job queued, attempted and sent at the given ages, written as the recorder writes it."""
    now = time.time()
    created, changed = now - created_days_ago * DAY_S, now - changed_days_ago * DAY_S
    TrackingStore(engine).apply([
        {"kind": "queued", "job_id": job_id, "at": created, "recipients": ["ann@example.com"],
         "subject": "Hello"},
        {"kind": "attempt", "job_id": job_id, "at": changed, "outcome": "sent", "smtp_code": 250,
         "recipients": ["ann@example.com"]},
        {"kind": "sent", "job_id": job_id, "at": changed, "attempts": 1},
    ])  # fmt: skip


def tracked(engine: Engine) -> tuple[set[str], set[str]]:
    """The ids of the stored jobs, and of the jobs with stored attempts."""
    with engine.connect() as conn:
        job_ids = set(conn.execute(select(jobs.c.id)).scalars())
        attempted = set(conn.execute(select(attempts.c.job_id).distinct()).scalars())
    return job_ids, attempted


def test_prune_deletes_jobs_unchanged_for_longer_than_the_retention_with_their_attempts(engine):
    # Given jobs of every age, one of them created long ago but replayed yesterday
    track(engine, "old", created_days_ago=120, changed_days_ago=120)
    track(engine, "just-over", created_days_ago=91, changed_days_ago=91)
    track(engine, "replayed", created_days_ago=200, changed_days_ago=1)
    track(engine, "recent", created_days_ago=2, changed_days_ago=2)

    assert count_stale(engine, days=90) == 2
    pruned = prune(engine, days=90)

    # Then the two untouched for 90 days are gone, attempts included; the others stay whole
    assert pruned == 2
    assert tracked(engine) == ({"replayed", "recent"}, {"replayed", "recent"})
    assert count_stale(engine, days=90) == 0
    assert TrackingStore(engine).job("replayed")["history"][0]["smtp_code"] == 250


def test_prune_with_zero_days_keeps_everything(engine):
    track(engine, "ancient", created_days_ago=3650, changed_days_ago=3650)
    track(engine, "recent", created_days_ago=1, changed_days_ago=1)

    assert count_stale(engine, days=0) == 0
    assert prune(engine, days=0) == 0
    assert tracked(engine) == ({"ancient", "recent"}, {"ancient", "recent"})


def test_prune_works_through_more_jobs_than_one_batch(engine):
    for i in range(7):
        track(engine, f"old-{i}", created_days_ago=40, changed_days_ago=40)
    track(engine, "recent", created_days_ago=1, changed_days_ago=1)

    assert prune(engine, days=30, batch=3) == 7
    assert tracked(engine) == ({"recent"}, {"recent"})


def test_the_daily_beat_job_prunes_the_workers_tracking_store(smtp_server, start_worker, tmp_path):
    # Given a worker whose store holds a job untouched for longer than its retention
    url = f"sqlite:///{tmp_path / 'worker-tracking.sqlite3'}"
    store = engine_for(url)
    ensure_schema(store)
    track(store, "stale", created_days_ago=40, changed_days_ago=40)
    track(store, "fresh", created_days_ago=5, changed_days_ago=5)
    start_worker(smtp_server, DATABASE_URL=url, TRACKING_RETENTION_DAYS="30")

    # When beat's job arrives
    app.send_task("emailq.prune_tracking", queue="normal")

    # Then the stale job goes and the fresh one stays
    deadline = time.monotonic() + 30
    while "stale" in tracked(store)[0]:
        assert time.monotonic() < deadline, "the prune job did not run"
        time.sleep(0.2)
    assert tracked(store) == ({"fresh"}, {"fresh"})


# `emailq prune`


@pytest.fixture
def cli_store(monkeypatch, tmp_path) -> Iterator[Engine]:
    """The CLI's tracking store, a SQLite file of this test's own, with one old and one new job."""
    monkeypatch.setenv("EMAILQ_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.sqlite3'}")
    monkeypatch.setenv("TRACKING_RETENTION_DAYS", "30")
    get_settings.cache_clear()  # settings are read once per process: read these
    store = engine_for(get_settings().tracking_url)
    ensure_schema(store)
    track(store, "old", created_days_ago=45, changed_days_ago=45)
    track(store, "new", created_days_ago=3, changed_days_ago=3)
    yield store
    store.dispose()
    monkeypatch.undo()
    get_settings.cache_clear()


def remaining(store: Engine) -> int:
    with store.connect() as conn:
        return conn.execute(select(func.count()).select_from(jobs)).scalar_one()


def test_prune_refuses_without_a_terminal_unless_yes(cli_store):
    # CliRunner's stdin is not a terminal, as under cron or CI
    refused = CliRunner().invoke(main, ["prune"])
    assert refused.exit_code == 1
    assert "stdin is not a terminal" in refused.output and "--yes" in refused.output
    assert remaining(cli_store) == 2

    done = CliRunner().invoke(main, ["prune", "--yes"])
    assert done.exit_code == 0 and "pruned 1 job" in done.output
    assert tracked(cli_store)[0] == {"new"}


def test_prune_asks_first_and_keeps_everything_when_the_answer_is_no(cli_store, monkeypatch):
    monkeypatch.setattr(PRUNE_CLI, "_interactive", lambda: True)  # a terminal

    declined = CliRunner().invoke(main, ["prune"], input="n\n")

    assert "Delete the tracking rows of 1 job unchanged for 30 days" in declined.output
    assert declined.exit_code == 1 and "Aborted" in declined.output
    assert remaining(cli_store) == 2


def test_prune_deletes_after_a_yes_and_days_overrides_the_retention(cli_store, monkeypatch):
    monkeypatch.setattr(PRUNE_CLI, "_interactive", lambda: True)  # a terminal

    confirmed = CliRunner().invoke(main, ["prune", "--days", "2"], input="y\n")

    assert "2 jobs unchanged for 2 days" in confirmed.output
    assert confirmed.exit_code == 0 and "pruned 2 jobs" in confirmed.output
    assert remaining(cli_store) == 0


def test_prune_with_zero_days_deletes_nothing_and_asks_nothing(cli_store):
    result = CliRunner().invoke(main, ["prune", "--days", "0"])

    assert result.exit_code == 0 and "nothing pruned" in result.output
    assert remaining(cli_store) == 2
