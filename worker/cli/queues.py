"""``emailq queues``: the backlog, place by place (``emailq.worker.queues``)."""

import json
import sys

import click
from rich.console import Console
from rich.table import Table

from emailq.core.store import redis_client
from emailq.worker.queues import snapshot

console = Console()


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def queues(as_json: bool) -> None:
    """Depth and oldest-job age of high, normal, the delayed set, dead_letter and in flight."""
    import redis

    try:
        places = snapshot(redis_client())
    except redis.RedisError as exc:
        click.echo(f"cannot read the queues from Redis (REDIS_URL): {exc}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps({p.name: p.as_dict() for p in places}, indent=2))
        return
    table = Table("place", "jobs", "oldest", "age measured")
    for place in places:
        table.add_row(place.name, str(place.depth), _age(place.oldest_age_s), place.note)
    console.print(table)
