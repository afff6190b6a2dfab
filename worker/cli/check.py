"""``emailq check``: configuration and connectivity, one line per piece, with the reason."""

import sys
import time
from collections.abc import Callable

import click
from kombu.utils.url import maybe_sanitize_url
from rich.console import Console

from emailq.config import Settings, load_settings
from emailq.config.providers import preset
from emailq.core.errors import ConfigurationError
from emailq.worker.classify import classify

console = Console()


class Notice(Exception):
    """Something an operator should know that is not a failure (printed with "!")."""


def _redis(settings: Settings) -> str:
    import redis

    from emailq.core.keys import MARKER

    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5)
    client.ping()
    marker = client.get(MARKER)
    if marker is None:
        raise Notice(
            f"{maybe_sanitize_url(settings.redis_url)} answers but holds no {MARKER}: no "
            "worker has started against it yet, or it lost its data (restarted empty, flushed)"
        )
    since = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(float(marker)))
    return f"{maybe_sanitize_url(settings.redis_url)} (its data kept since {since})"


def _quarantine(settings: Settings) -> str:
    import json

    from emailq.core.keys import QUARANTINE
    from emailq.core.store import connect

    client = connect(settings)
    count = client.llen(QUARANTINE)
    if not count:
        return f"{QUARANTINE} is empty"
    newest = client.lindex(QUARANTINE, 0) or b"{}"
    try:  # a record is JSON written by a worker; anyone with Redis access could change it
        record = json.loads(newest.decode("utf-8", "replace"))
        at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(float(record["at"])))
        last = f"the newest at {at} from {str(record['queue'])[:40]}: "
        last += str(record["error"])[:80]
    except (ValueError, KeyError, TypeError, OverflowError):
        last = "the newest is not a record a worker wrote"
    raise Notice(f"{count} malformed queue item(s) moved aside ({last}); see LRANGE {QUARANTINE}")


def _preset(settings: Settings) -> str:
    """SMTP_PROVIDER's host and port, or a notice that explicit variables override them."""
    chosen = preset(str(settings.smtp_provider))
    given = f"SMTP_PROVIDER={settings.smtp_provider}"
    overrides = [
        name for name, ours, theirs in (
            ("SMTP_SERVER", settings.smtp_server, chosen.host),
            ("SMTP_PORT", settings.smtp_port, chosen.port),
            # an explicit port picks its own mode: only an explicit SMTP_SECURITY is named
            ("SMTP_SECURITY", settings.smtp_security or chosen.security, chosen.security),
        ) if ours != theirs
    ]  # fmt: skip
    if not overrides:
        return f"{given}: {chosen.host}:{chosen.port} ({chosen.security})"
    raise Notice(
        f"{given} sets {chosen.host}:{chosen.port} ({chosen.security}), but "
        f"{'/'.join(overrides)} override{'s' if len(overrides) == 1 else ''} it with "
        f"{settings.smtp_server}:{settings.smtp_port} ({settings.security}); unset "
        f"{' and '.join(overrides)} to use the preset"
    )


def _smtp(settings: Settings) -> str:
    from emailq.worker.sender import SMTPSender

    settings.sender  # noqa: B018 - raises when no From address is configured
    smtp = SMTPSender(settings).connect()  # connect, EHLO, STARTTLS with verification, AUTH
    smtp.quit()
    steps = {
        "ssl": "implicit TLS, certificate verified",
        "starttls": "STARTTLS, certificate verified",
        "none": "no TLS",
    }[settings.security]
    login = f"logged in as {settings.login}" if settings.email_password else "no login"
    return f"{settings.smtp_server}:{settings.smtp_port}: EHLO, {steps}, {login}"


def _circuit(settings: Settings) -> str:
    from emailq.core.store import connect
    from emailq.worker.circuit import Circuit, account

    state = Circuit(connect(settings), account(settings)).state()
    if state["state"] == "closed":
        return f"closed ({state['failures']} recent connection failures)"
    left = ""
    if "seconds_left" in state:
        left = f", {state['seconds_left']:.0f}s before the next probe"
    raise RuntimeError(
        f"{state['state']} after {state['failures']} connection failures{left}: workers hold "
        f"every job back from {settings.smtp_server}:{settings.smtp_port}"
    )


def _database(settings: Settings) -> str:
    from emailq.worker.tracking import TrackingStore, engine_for, ensure_schema

    engine = engine_for(settings.tracking_url)
    ensure_schema(engine)
    TrackingStore(engine).ping()
    source = "EMAILQ_DATABASE_URL or DATABASE_URL" if settings.database_url else "EMAILQ_DATA_DIR"
    return f"{maybe_sanitize_url(settings.tracking_url)} (from {source})"


def _reason(exc: Exception, *, smtp: bool) -> str:
    classified = classify(exc) if smtp else None  # classify() words SMTP failures only
    return str(classified if classified is not None else exc) or type(exc).__name__


@click.command()
def check() -> None:
    """Check the configuration, Redis, SMTP and the tracking database; exit 1 on any failure."""
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        console.print(f"[red]✗[/] configuration: {exc}", highlight=False)
        sys.exit(1)
    console.print(f"[green]✓[/] configuration: SMTP_SECURITY={settings.security}", highlight=False)
    checks: list[tuple[str, Callable[[Settings], str]]] = [
        ("redis", _redis), ("queue quarantine", _quarantine), ("smtp", _smtp),
        ("smtp circuit", _circuit),
        ("tracking database", _database),
    ]  # fmt: skip
    if settings.smtp_provider:
        checks.insert(0, ("smtp preset", _preset))
    failures = 0
    for name, probe in checks:
        try:
            detail = probe(settings)
        except Notice as notice:  # worth knowing, not a failure
            console.print(f"[yellow]![/] {name}: {notice}", highlight=False)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none stops the list
            failures += 1
            console.print(f"[red]✗[/] {name}: {_reason(exc, smtp=probe is _smtp)}", highlight=False)
        else:
            console.print(f"[green]✓[/] {name}: {detail}", highlight=False)
    sys.exit(1 if failures else 0)
