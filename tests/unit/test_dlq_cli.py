"""``emailq dlq`` on a fakeredis dead-letter queue: show, purge's confirmation, replay's filters."""

import importlib
import json
import time
from datetime import UTC, datetime

import fakeredis
import pytest
from click.testing import CliRunner

from emailq.worker import deadletter
from emailq.worker.cli.dlq import Since, dlq

# The package exports the `dlq` command under the module's own name: reach the module itself.
dlq_module = importlib.import_module("emailq.worker.cli.dlq")


def entry(job_id: str, *, reason: str = "permanent", batch: str | None = None,
          dead_at: float | None = None, failed: dict | None = None) -> dict:  # fmt: skip
    job = {"to": ["carol@example.com"], "subject": "Invoice", "text": "x"}
    if batch:
        job["batch_id"] = batch
    return {
        "job_id": job_id, "job": job, "reason": reason, "error": "PermanentError: refused",
        "smtp_code": None, "smtp_text": None, "attempts": [],
        "failed_recipients": failed or {"carol@example.com": [None, None]},
        "delivered_recipients": [], "traceback": None,
        "dead_at": time.time() if dead_at is None else dead_at,
    }  # fmt: skip


def bury(client, *entries: dict) -> None:
    """As kombu stores a message: a JSON envelope, newest on the left."""
    for e in entries:
        client.lpush(deadletter.QUEUE.name, json.dumps({"body": json.dumps(e), "properties": {}}))


@pytest.fixture
def redis(monkeypatch):
    client = fakeredis.FakeRedis()
    monkeypatch.setattr(dlq_module, "redis_client", lambda: client)
    return client


def run(*args: str, **kwargs):
    return CliRunner().invoke(dlq, list(args), **kwargs)


# (c) show


def test_show_says_no_reply_recorded_for_a_recipient_without_one(redis):
    bury(redis, entry("job-1"))

    out = run("show", "job-1", env={"COLUMNS": "200"})

    assert out.exit_code == 0, out.output
    assert "None" not in out.output
    assert "no reply recorded" in out.output


# (e) purge asks, or takes --yes


def test_purge_without_a_terminal_refuses_and_says_to_pass_yes(redis):
    bury(redis, entry("job-1"), entry("job-2"))

    out = run("purge")

    assert out.exit_code == 1
    assert "not purging 2 dead-letter entries without confirmation" in out.output
    assert "pass --yes" in out.output
    assert len(deadletter.read(redis)) == 2


def test_purge_with_yes_deletes_without_asking(redis):
    bury(redis, entry("job-1"), entry("job-2"))

    out = run("purge", "--yes")

    assert out.exit_code == 0 and "purged 2 entries" in out.output
    assert deadletter.read(redis) == []


@pytest.mark.parametrize(("answer", "left"), [("n\n", 2), ("y\n", 0)], ids=["no", "yes"])
def test_purge_at_a_terminal_asks_first_and_does_what_the_answer_says(
    redis, monkeypatch, answer, left
):
    monkeypatch.setattr(dlq_module, "_interactive", lambda: True)
    bury(redis, entry("job-1"), entry("job-2"))

    out = run("purge", input=answer)

    assert "Delete 2 dead-letter entries for good? [y/N]" in out.output
    assert out.exit_code == (0 if left == 0 else 1)
    assert len(deadletter.read(redis)) == left


def test_purge_older_than_counts_only_the_old_entries_in_its_question(redis, monkeypatch):
    monkeypatch.setattr(dlq_module, "_interactive", lambda: True)
    bury(redis, entry("old", dead_at=time.time() - 10 * 86400), entry("new"))

    out = run("purge", "--older-than", "7", input="y\n")

    assert "Delete 1 dead-letter entry older than 7 days for good?" in out.output
    assert [s.entry["job_id"] for s in deadletter.read(redis)] == ["new"]


# (h) replay's filters


def test_filters_select_entries_passing_every_filter_given():
    now = time.time()
    stored = [
        deadletter.Stored(b"", entry("a", reason="exhausted", batch="b1", dead_at=now - 60)),
        deadletter.Stored(b"", entry("b", reason="permanent", batch="b1", dead_at=now - 60)),
        deadletter.Stored(b"", entry("c", reason="exhausted", batch="b2", dead_at=now - 7200)),
    ]

    def ids(**filters):
        return [s.entry["job_id"] for s in deadletter.select(stored, **filters)]

    assert ids() == ["a", "b", "c"]
    assert ids(reasons=["exhausted"]) == ["a", "c"]
    assert ids(batches=["b1"]) == ["a", "b"]
    assert ids(since=now - 3600) == ["a", "b"]
    assert ids(reasons=["exhausted"], batches=["b1"], since=now - 3600) == ["a"]
    assert ids(reasons=["exhausted", "permanent"], batches=["b2"]) == ["c"]


def test_since_takes_a_duration_ago_or_an_iso_time_in_utc():
    since = Since()

    assert abs(since.convert("2h", None, None) - (time.time() - 7200)) < 5
    assert abs(since.convert("1d12h", None, None) - (time.time() - 36 * 3600)) < 5
    assert since.convert("2024-05-01T09:30", None, None) == (
        datetime(2024, 5, 1, 9, 30, tzinfo=UTC).timestamp()
    )
    assert since.convert("2024-05-01T11:30+02:00", None, None) == (
        datetime(2024, 5, 1, 9, 30, tzinfo=UTC).timestamp()
    )


def test_a_bad_since_is_refused_saying_what_is_accepted(redis):
    out = run("replay", "--since", "yesterday")

    assert out.exit_code == 2
    assert "'yesterday' is neither an ISO date/time" in out.output
    assert "30m, 2h" in out.output


@pytest.mark.parametrize(
    "args", [(), ("job-1", "--all"), ("job-1", "--reason", "permanent")], ids=str
)
def test_replay_needs_either_job_ids_or_all_and_filters(redis, args):
    out = run("replay", *args)

    assert out.exit_code == 2
    assert "give job ids" in out.output


def test_a_filter_that_matches_nothing_replays_nothing_and_says_so(redis):
    bury(redis, entry("job-1", reason="permanent"))

    out = run("replay", "--reason", "exhausted")

    assert out.exit_code == 0
    assert "nothing to replay: none of 1 dead-letter entry passes the filters" in out.output
    assert len(deadletter.read(redis)) == 1


def test_an_unknown_reason_is_refused_listing_the_known_ones(redis):
    out = run("replay", "--reason", "bounced")

    assert out.exit_code == 2 and "exhausted" in out.output
