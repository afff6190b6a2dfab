"""``emailq dlq``: list, show, replay and purge dead-lettered jobs."""

import json
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from emailq.core.errors import InvalidEmail
from emailq.core.job import EmailJob
from emailq.core.store import redis_client
from emailq.worker import deadletter
from emailq.worker.cli.tracking import format_time
from emailq.worker.ledger import Ledger
from emailq.worker.recorder import recorder
from emailq.worker.tasks import send

console = Console()

# A duration ago, e.g. "30m", "2h", "1d12h". Written here: the libraries that parse
# durations (pytimeparse, humanfriendly) are not dependencies, and five units suffice.
PART = r"(\d+(?:\.\d+)?)([smhdw])"
DURATION = re.compile(f"(?:{PART})+")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class Since(click.ParamType):
    """A point in time: ISO 8601 (UTC unless it names an offset) or a duration ago."""

    name = "TIME"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip()
        if DURATION.fullmatch(text.lower()):
            parts = re.findall(PART, text.lower())
            return time.time() - sum(float(n) * UNIT_S[unit] for n, unit in parts)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.fail(
                f"{text!r} is neither an ISO date/time (2024-05-01, 2024-05-01T09:30, "
                "2024-05-01T09:30+02:00; UTC unless an offset is given) nor a duration ago "
                "(45s, 30m, 2h, 1d, 1w, or combined: 1d12h)",
                param, ctx,
            )  # fmt: skip
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _interactive() -> bool:
    """Whether someone can answer a question: stdin is a terminal."""
    return sys.stdin.isatty()


def _entries(count: int) -> str:
    return f"{count} dead-letter entr{'y' if count == 1 else 'ies'}"


def _reply(entry: dict[str, Any]) -> str:
    code, text = entry.get("smtp_code"), entry.get("smtp_text")
    return f"{code} {text}" if code else (entry.get("error") or "-")


@click.group()
def dlq() -> None:
    """Inspect and replay jobs in the dead-letter queue."""


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--limit", type=click.IntRange(min=1), help="Show only the newest N entries.")
def list_(as_json: bool, limit: int | None) -> None:
    """List dead-lettered jobs, newest first."""
    entries = [s.entry for s in reversed(deadletter.read(redis_client()))][:limit]
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    table = Table(title=f"Dead-letter queue ({len(entries)} shown)")
    for column in ("job id", "dead at (UTC)", "reason", "to", "subject", "last reply", "tries"):
        table.add_column(column, overflow="fold")
    for e in entries:
        job = e["job"]
        table.add_row(
            e["job_id"], format_time(e["dead_at"]), e["reason"], ", ".join(job.get("to", [])),
            str(job.get("subject", "")), _reply(e), str(len(e["attempts"])),
        )  # fmt: skip
    console.print(table)


@dlq.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def show(job_id: str, as_json: bool) -> None:
    """Show one dead-lettered job: reason, attempts and failed recipients."""
    stored = deadletter.find(redis_client(), job_id)
    if stored is None:
        raise click.ClickException(f"no dead-lettered job {job_id}")
    entry = stored.entry
    if as_json:
        click.echo(json.dumps(entry, indent=2))
        return
    job = entry["job"]
    summary = Table(show_header=False, title=f"Job {job_id}")
    for key, value in (
        ("reason", entry["reason"]), ("dead at (UTC)", format_time(entry["dead_at"])),
        ("priority", job.get("priority", "normal")), ("to", ", ".join(job.get("to", []))),
        ("subject", job.get("subject", "")), ("last reply", _reply(entry)),
        ("error", entry.get("error") or "-"),
        ("delivered to", ", ".join(entry.get("delivered_recipients", [])) or "-"),
    ):  # fmt: skip
        summary.add_row(key, str(value))
    console.print(summary)
    failed = Table(title="Failed recipients")
    failed.add_column("recipient")
    failed.add_column("reply")
    for rcpt, (code, text) in entry["failed_recipients"].items():
        failed.add_row(rcpt, deadletter.reply_text(code, text))
    console.print(failed)
    attempts = Table(title="Attempts")
    for column in ("#", "at (UTC)", "outcome", "reply", "recipients"):
        attempts.add_column(column, overflow="fold")
    for i, a in enumerate(entry["attempts"], 1):
        reply = f"{a.get('smtp_code') or ''} {a.get('smtp_text') or a.get('error') or ''}"
        attempts.add_row(
            str(i),
            format_time(a["at"]),
            a["outcome"],
            reply.strip(),
            ", ".join(a.get("recipients", [])),
        )
    console.print(attempts)
    if entry.get("traceback"):
        console.print(entry["traceback"], markup=False, highlight=False)


@dlq.command()
@click.argument("job_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every entry the filters pass.")
@click.option(
    "--reason", "reasons", multiple=True, type=click.Choice(deadletter.REASONS),
    help="Only entries dead for this reason; repeat for several.",
)  # fmt: skip
@click.option(
    "--batch", "batches", multiple=True, metavar="BATCH_ID",
    help="Only jobs of this bulk batch (the id enqueue_bulk returned); repeat for several.",
)  # fmt: skip
@click.option(
    "--since", type=Since(),
    help="Only entries dead since TIME: ISO date/time (UTC), or a duration ago (30m, 2h, 1d).",
)  # fmt: skip
def replay(
    job_ids: tuple[str, ...], replay_all: bool, reasons: tuple[str, ...],
    batches: tuple[str, ...], since: float | None,
) -> None:  # fmt: skip
    """Re-enqueue jobs with the same id and priority and a fresh retry budget.

    Give job ids, or --all and/or filters: an entry is replayed when it passes every
    filter given. Only the recipients who never got the message are sent to.
    """
    filtered = bool(reasons or batches) or since is not None
    if job_ids and (replay_all or filtered):
        raise click.UsageError("give job ids, or --all and/or filters, not both")
    if not job_ids and not (replay_all or filtered):
        raise click.UsageError("give job ids, --all, or filters (--reason, --batch, --since)")
    client = redis_client()
    ledger = Ledger(client)
    stored = deadletter.read(client)
    if job_ids:
        wanted = [s for s in stored if s.entry["job_id"] in job_ids]
    else:
        wanted = deadletter.select(stored, reasons=reasons, batches=batches, since=since)
        if filtered and not wanted:
            click.echo(f"nothing to replay: none of {_entries(len(stored))} passes the filters")
    missing = set(job_ids) - {s.entry["job_id"] for s in wanted}
    failures = 0
    for job_id in sorted(missing):
        click.echo(f"{job_id}: not in the dead-letter queue", err=True)
        failures += 1
    track = recorder()
    for s in wanted:
        try:  # the entry came out of Redis: its job must still have a job's shape
            job = EmailJob.from_dict(s.entry.get("job"))
        except InvalidEmail as exc:
            click.echo(f"{s.entry['job_id']}: cannot replay: {exc}", err=True)
            failures += 1
            continue
        track.emit("requeued", s.entry["job_id"], s.entry["job"])
        deadletter.replay(
            client, s, reopen=ledger.reopen,
            enqueue=lambda payload, job_id, queue=job.priority: send.apply_async(
                kwargs=payload, task_id=job_id, queue=queue
            ),
        )  # fmt: skip
        click.echo(f"{s.entry['job_id']}: replayed")
    if failures:
        sys.exit(1)


@dlq.command()
@click.option(
    "--older-than", "days", type=click.FloatRange(min=0), help="Only entries older than DAYS."
)
@click.option("--yes", "-y", is_flag=True, help="Delete without asking.")
def purge(days: float | None, yes: bool) -> None:
    """Delete dead-lettered jobs for good; asks first unless --yes."""
    client = redis_client()
    older_than_s = None if days is None else days * 86400
    if not yes:
        if older_than_s is None:
            count = client.llen(deadletter.QUEUE.name)
        else:
            cutoff = time.time() - older_than_s
            count = sum(s.entry["dead_at"] < cutoff for s in deadletter.read(client))
        doomed = _entries(count) + ("" if days is None else f" older than {days:g} days")
        if not count:  # nothing to ask about; an entry dead since then is not touched
            click.echo("purged 0 entries")
            return
        if not _interactive():  # nobody to answer: refuse rather than wait
            raise click.ClickException(
                f"not purging {doomed} without confirmation (stdin is not a terminal): "
                "pass --yes to delete them"
            )
        click.confirm(f"Delete {doomed} for good?", abort=True)
    removed = deadletter.purge(client, older_than_s=older_than_s)
    click.echo(f"purged {removed} entr{'y' if removed == 1 else 'ies'}")
