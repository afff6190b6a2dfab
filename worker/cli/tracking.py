"""``emailq status``, ``stats`` and ``failed``: what the tracking store knows."""

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from emailq.core.keys import BATCH
from emailq.core.store import redis_client
from emailq.worker.ledger import Ledger
from emailq.worker.recorder import default_store, recorder

console = Console()


def format_time(epoch: float | None) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S") if epoch else "-"


def up_to_date() -> None:
    """Store the producers' events still waiting in Redis, so answers include them."""
    track = recorder()
    track.drain()
    track.flush()


def batch_info(batch_id: str) -> dict[str, Any] | None:
    raw = redis_client().hgetall(BATCH + batch_id)
    if not raw:
        return None
    return {k.decode(): float(v) if k == b"created_at" else int(v) for k, v in raw.items()}


def job_status(job_id: str) -> dict[str, Any] | None:
    """The tracked job, corrected by the Redis ledger, which knows a final outcome first."""
    up_to_date()
    job = default_store().job(job_id)
    state = Ledger(redis_client()).state(job_id)
    if job is None and state.final is None:
        return None
    job = job or {"id": job_id, "status": "sending", "history": []}
    if state.final and job["status"] != state.final:
        job["status"] = state.final
    job["delivered_to"] = sorted(state.delivered)
    job["refused"] = {r: list(v) for r, v in state.failed.items()}
    return job


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(job_id: str, as_json: bool) -> None:
    """A job's status: queued, sending, retrying, sent, partial or dead."""
    job = job_status(job_id)
    if job is None:
        click.echo(f"unknown job {job_id}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(job, indent=2, default=str))
        return
    table = Table(show_header=False, title=f"Job {job_id}")
    for key in ("status", "priority", "subject", "attempts", "last_error"):
        table.add_row(key, str(job.get(key, "-")))
    table.add_row("recipients", ", ".join(job.get("recipients", [])))
    table.add_row("delivered to", ", ".join(job["delivered_to"]) or "-")
    for key in ("created_at", "sent_at", "updated_at"):
        table.add_row(key.replace("_at", "") + " (UTC)", format_time(job.get(key)))
    console.print(table)
    history = Table(title="Attempts")
    for column in ("at (UTC)", "outcome", "reply", "recipients"):
        history.add_column(column, overflow="fold")
    for a in job["history"]:
        reply = f"{a.get('smtp_code') or ''} {a.get('smtp_text') or ''}".strip()
        history.add_row(format_time(a["at"]), a["outcome"], reply, ", ".join(a["recipients"]))
    console.print(history)


@click.command()
@click.option("--days", default=7.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def stats(days: float, as_json: bool) -> None:
    """Counts and percentages by status for jobs created in the last N days."""
    up_to_date()
    counts = default_store().stats(days=days)
    total = sum(counts.values())
    rows = {s: {"count": n, "percent": round(100 * n / total, 1) if total else 0.0}
            for s, n in counts.items()}  # fmt: skip
    if as_json:
        click.echo(json.dumps({"days": days, "total": total, "by_status": rows}, indent=2))
        return
    table = Table(title=f"Jobs created in the last {days:g} days: {total}")
    for column in ("status", "count", "percent"):
        table.add_column(column, justify="right" if column != "status" else "left")
    for s, row in rows.items():
        table.add_row(s, str(row["count"]), f"{row['percent']:.1f}%")
    console.print(table)


@click.command()
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def failed(limit: int, as_json: bool) -> None:
    """The most recent jobs that ended dead, with their last error."""
    jobs = default_store().failed(limit=limit)
    if as_json:
        click.echo(json.dumps(jobs, indent=2, default=str))
        return
    table = Table(title=f"Failed jobs (newest {limit})")
    for column in ("job id", "when (UTC)", "recipients", "subject", "attempts", "last error"):
        table.add_column(column, overflow="fold")
    for j in jobs:
        table.add_row(
            j["id"], format_time(j["updated_at"]), ", ".join(j["recipients"]), j["subject"],
            str(j["attempts"]), j["last_error"] or "-",
        )  # fmt: skip
    console.print(table)


@click.command()
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def batch(batch_id: str, as_json: bool) -> None:
    """Progress of a bulk send: how many of its jobs are in each status."""
    up_to_date()
    info = batch_info(batch_id)
    counts = default_store().batch(batch_id)
    if info is None and not any(counts.values()):
        click.echo(f"unknown batch {batch_id}", err=True)
        sys.exit(1)
    total = (info or {}).get("total", sum(counts.values()))
    skipped = (info or {}).get("skipped", 0)
    done = counts["sent"] + counts["dead"]
    if as_json:
        body = {"batch_id": batch_id, "total": total, "skipped_invalid": skipped,
                "done": done, "by_status": counts}  # fmt: skip
        click.echo(json.dumps(body, indent=2))
        return
    table = Table(title=f"Batch {batch_id}: {done} of {total} done, {skipped} skipped as invalid")
    table.add_column("status")
    table.add_column("jobs", justify="right")
    for s, n in counts.items():
        table.add_row(s, str(n))
    console.print(table)
