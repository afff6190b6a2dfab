"""``emailq prune``: delete old tracking rows now, as beat does daily."""

import sys

import click
from kombu.utils.url import maybe_sanitize_url

from emailq.config import get_settings
from emailq.worker import retention
from emailq.worker.recorder import default_store


def _interactive() -> bool:
    """Whether someone can answer a question: stdin is a terminal."""
    return sys.stdin.isatty()


def _jobs(count: int) -> str:
    return f"{count} job{'' if count == 1 else 's'}"


@click.command()
@click.option(
    "--days",
    type=click.IntRange(min=0),
    help="Keep jobs changed in the last N days (0 keeps all).  [default: TRACKING_RETENTION_DAYS]",
)
@click.option("--yes", is_flag=True, help="Delete without asking.")
def prune(days: int | None, yes: bool) -> None:
    """Delete tracking rows (jobs and their attempts) unchanged for N days; asks first."""
    settings = get_settings()
    days = settings.tracking_retention_days if days is None else days
    if days == 0:
        click.echo("retention is 0 days (keep for ever): nothing pruned")
        return
    engine = default_store().engine
    if not yes:
        count = retention.count_stale(engine, days=days)
        if not count:  # nothing to ask about
            click.echo("pruned 0 jobs")
            return
        doomed = f"{_jobs(count)} unchanged for {days} days"
        if not _interactive():  # nobody to answer: refuse rather than wait
            raise click.ClickException(
                f"not deleting {doomed} without confirmation (stdin is not a terminal): "
                "pass --yes to delete them"
            )
        where = maybe_sanitize_url(settings.tracking_url)
        click.confirm(f"Delete the tracking rows of {doomed} from {where}?", abort=True)
    click.echo(f"pruned {_jobs(retention.prune(engine, days=days))}")
