"""``emailq worker``: one Celery worker process per core under one supervisor."""

import logging

import click

from emailq.worker.supervisor import THREADS, default_processes


@click.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--processes", type=click.IntRange(min=1), default=None,
    help="Worker processes.  [default: one per core]",
)  # fmt: skip
@click.option(
    "--threads", type=click.IntRange(min=1), default=THREADS, show_default=True,
    help="Threads per process.",
)  # fmt: skip
@click.option("-Q", "--queues", default="high,normal", show_default=True, help="Queues to take.")
@click.option("--loglevel", default="INFO", show_default=True)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(
    processes: int | None, threads: int, queues: str, loglevel: str, celery_args: tuple[str, ...]
) -> None:
    """Run the workers: SMTP_MAX_CONNECTIONS is shared between the processes.

    SIGTERM or Ctrl-C stops them warmly (a second one, cold); a process that dies is
    started again. Arguments after -- go to each `celery worker`.
    """
    from emailq.config import get_settings
    from emailq.worker.supervisor import Supervisor

    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s: %(levelname)s/supervisor] %(message)s"
    )
    supervisor = Supervisor(
        processes=processes or default_processes(), threads=threads,
        connections=get_settings().smtp_max_connections, queues=queues, loglevel=loglevel,
        extra=list(celery_args),
    )  # fmt: skip
    raise SystemExit(supervisor.run())
