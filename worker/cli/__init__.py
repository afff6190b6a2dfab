"""``emailq``: the operator's command line."""

import logging
import signal
import threading
from pathlib import Path

import click

from emailq.worker.cli.check import check
from emailq.worker.cli.dlq import dlq
from emailq.worker.cli.prune import prune
from emailq.worker.cli.queues import queues
from emailq.worker.cli.tracking import batch, failed, stats, status
from emailq.worker.cli.worker import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Email notifications on Celery and Redis: operator tools."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=1025, show_default=True, help="Port to listen on.")
@click.option(
    "--outbox",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the captured .eml files.  [default: EMAILQ_DATA_DIR/outbox]",
)
def sink(host: str, port: int, outbox: Path | None) -> None:
    """Run a development SMTP server that saves each message as an .eml file."""
    if outbox is None:
        from emailq.config import get_settings

        outbox = get_settings().data_dir / "outbox"
    from emailq.worker.cli.sink import start_sink

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # aiosmtpd logs every command at INFO, AUTH lines included: keep it to warnings.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    controller = start_sink(host, port, outbox)
    click.echo(f"SMTP sink on {host}:{port}, writing to {outbox.resolve()}/ (Ctrl-C stops)")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()


for command in (dlq, status, stats, failed, check, batch, queues, prune, worker):
    main.add_command(command)
