"""What a worker of ours does as it starts and stops, and after a job fails.

Every handler acts only for our app: a host application's own Celery worker that
imports ``emailq.worker`` starts without our settings and runs none of this.
"""

import logging
from typing import Any

from celery.app import trace
from celery.signals import (
    after_setup_logger,
    task_failure,
    task_retry,
    task_revoked,
    worker_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from celery.utils import uuid

from emailq.config import get_settings
from emailq.core.errors import ConfigurationError, InvalidEmail
from emailq.core.store import redis_client
from emailq.worker import deadletter, memtrace
from emailq.worker.app import app
from emailq.worker.delivery import close_shared_sender
from emailq.worker.marker import Watch
from emailq.worker.monitor import Monitor
from emailq.worker.mover import Mover
from emailq.worker.periodic import publish as publish_job
from emailq.worker.recorder import recorder
from emailq.worker.retry import decide
from emailq.worker.sender import tls_context
from emailq.worker.tasks import send

log = logging.getLogger(__name__)

TASKS = frozenset({"emailq.send", "emailq.send_many"})


def _ours(sender: Any) -> bool:
    """True for our app's worker, consumer or task; the host's own are left alone."""
    return getattr(sender, "app", None) is app


@worker_init.connect
def _refuse_to_start_unable_to_send(sender: Any = None, **_: Any) -> None:
    if not _ours(sender):
        return
    memtrace.install()  # tracemalloc snapshots, only with EMAILQ_TRACEMALLOC_DIR set
    # Celery logs and swallows exceptions from signal handlers; SystemExit stops the worker.
    try:
        settings = get_settings()
        settings.sender  # noqa: B018 - raises when neither From variable is set
        if settings.security != "none":
            tls_context(settings)  # SMTP_CA_FILE must be readable here, on the worker
    except ConfigurationError as exc:
        raise SystemExit(f"worker not started: {exc}") from None


# Celery's two INFO lines per job ("received", "succeeded"), which cost a fast worker about a
# tenth of its throughput (benchmarks/RESULTS.md). Flower and `emailq status` show every job,
# and our own line says where it went; retries, deferrals and failures still log.
# `--loglevel=DEBUG` keeps Celery's two.
class _NoSuccessLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg is not trace.LOG_SUCCESS


class _OneLine(logging.Filter):
    """Our lines quote SMTP replies and error texts that a remote server wrote, and smtplib
    joins a reply's lines with newlines. Escaped, such text cannot start a log line of its
    own (one that would pass for a line of ours). Tracebacks keep their lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("emailq"):
            message = record.getMessage()
            if "\n" in message or "\r" in message:
                record.msg = message.replace("\r", "\\r").replace("\n", "\\n")
                record.args = ()
        return True


@after_setup_logger.connect
def _one_line_per_record(logger: logging.Logger | None = None, **_: Any) -> None:
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, _OneLine) for f in handler.filters):
            handler.addFilter(_OneLine())


@worker_init.connect
def _quiet_per_job_lines(sender: Any = None, **_: Any) -> None:
    if not _ours(sender) or getattr(sender, "loglevel", logging.INFO) <= logging.DEBUG:
        return
    logging.getLogger("celery.worker.strategy").setLevel(logging.WARNING)  # "received"
    trace_logger = logging.getLogger(trace.__name__)
    if not any(isinstance(f, _NoSuccessLine) for f in trace_logger.filters):
        trace_logger.addFilter(_NoSuccessLine())


@task_failure.connect
def _dead_letter(sender=None, task_id=None, exception=None, kwargs=None, einfo=None, **_):
    """Every failed job, in the task body or around it, ends as the one decision says."""
    if not _ours(sender) or sender.name not in TASKS:
        return
    decision = decide(exception, retries=sender.request.retries or 0, settings=get_settings())
    if decision.action != "dead":  # the task bodies act on these themselves, before this
        log.error("job %s: %s outside the task body; not dead-lettered", task_id, exception)
        return
    traceback = getattr(einfo, "traceback", None)
    deadletter.bury(
        app, task_id, kwargs or {}, exception, reason=decision.reason, traceback=traceback
    )


@task_revoked.connect
def _track_expired(sender=None, request=None, expired=False, **_):
    """A job past its ``expires`` is dropped by Celery; the drop is recorded, not silent."""
    if expired and _ours(sender) and sender.name == send.name:
        log.warning("job %s expired before it could be sent; dropped", request.id)
        recorder().emit("dead", request.id, request.kwargs or {}, last_error="expired")


@task_retry.connect
def _track_retry(sender=None, request=None, reason=None, **_):
    if _ours(sender) and sender.name == send.name:
        recorder().emit(
            "retrying", request.id, request.kwargs or {},
            attempts=request.retries + 1, last_error=str(reason),
        )  # fmt: skip


_mover: Mover | None = None
_monitor: Monitor | None = None


@worker_ready.connect
def _start(sender: Any = None, **_: Any) -> None:
    """Start the delayed-job mover, the tracking writer (which stores producers' events) and
    the host monitor (``emailq.worker.monitor``)."""
    global _mover, _monitor
    if not _ours(sender):
        return

    def publish(entry: dict[str, Any]) -> None:
        app.tasks[entry["task"]].apply_async(
            kwargs=entry["kwargs"], task_id=entry["task_id"], queue=entry["queue"],
            retries=entry.get("retries", 0), expires=entry.get("expires"),
        )  # fmt: skip

    def reject(raw: bytes, error: Exception) -> None:
        bad = InvalidEmail(f"malformed delayed entry: {error}")
        deadletter.bury(app, uuid(), {"malformed": raw.decode("utf-8", "replace")[:2000]}, bad,
                        reason="invalid")  # fmt: skip

    _mover = Mover(redis_client(), publish, reject=reject).start()
    Watch(redis_client()).start()
    recorder()
    _monitor = Monitor(redis_client(), get_settings(), publish_job).start()


@worker_shutdown.connect
def _stop(sender: Any = None, **_: Any) -> None:
    if not _ours(sender):
        return
    if _mover is not None:
        _mover.stop()
    if _monitor is not None:
        _monitor.stop()
    close_shared_sender()
    recorder().flush()


@worker_process_shutdown.connect
def _close_child(**_: Any) -> None:
    # Prefork children carry no app in the signal; closing only what this process opened
    # is harmless for a host's worker that never used our sender.
    close_shared_sender()
