"""``emailq dlq``: list, show, replay and purge dead-lettered jobs."""

import json
import sys
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
        failed.add_row(rcpt, f"{code} {text}")
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
@click.option("--all", "replay_all", is_flag=True, help="Replay every entry.")
def replay(job_ids: tuple[str, ...], replay_all: bool) -> None:
    """Re-enqueue jobs with the same id and priority and a fresh retry budget."""
    if bool(job_ids) == replay_all:
        raise click.UsageError("give job ids or --all, not both")
    client = redis_client()
    ledger = Ledger(client)
    stored = deadletter.read(client)
    wanted = stored if replay_all else [s for s in stored if s.entry["job_id"] in job_ids]
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
def purge(days: float | None) -> None:
    """Delete dead-lettered jobs for good."""
    removed = deadletter.purge(redis_client(), older_than_s=None if days is None else days * 86400)
    click.echo(f"purged {removed} entr{'y' if removed == 1 else 'ies'}")
