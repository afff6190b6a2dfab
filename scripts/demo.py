"""`make demo`: the whole pipeline on this machine, end to end.

Finds Redis (or starts a private one), starts the SMTP sink and a worker, enqueues a
realistic mix of notifications, waits for them, prints what happened, and stops what
it started. Exits 0 only if every message was delivered.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import redis
from kombu.utils.url import maybe_sanitize_url
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
VAR = ROOT / "var"
OUTBOX = VAR / "outbox"
console = Console(width=max(110, shutil.get_terminal_size().columns))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def wait_until(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise SystemExit(f"demo: {what} did not come up within {timeout:.0f}s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def private_redis(stack: ExitStack) -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit(
            "demo: no Redis answers at REDIS_URL and redis-server is not installed.\n"
            "  Debian/Ubuntu: sudo apt install redis-server\n"
            "  macOS:         brew install redis\n"
            "  Docker:        docker compose up -d redis"
        )
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="emailq-demo-redis-"))
    stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    stack.callback(stop, process)
    url = f"redis://127.0.0.1:{port}/0"
    wait_until(lambda: answers(url), "the private redis-server")
    console.print(f"Started a private redis-server on port {port}.")
    return url


def choose_redis(stack: ExitStack) -> str:
    from emailq.config import load_settings

    url = load_settings().redis_url
    if not answers(url):
        console.print(f"No Redis answers at {maybe_sanitize_url(url)}.")
        return private_redis(stack)
    queued = sum(redis.Redis.from_url(url).llen(q) for q in ("high", "normal"))
    if queued:
        raise SystemExit(
            f"demo: {maybe_sanitize_url(url)} already has {queued} job(s) queued; the demo's "
            "worker would send them to its sink. Point REDIS_URL at a development Redis."
        )
    console.print(f"Using Redis at {maybe_sanitize_url(url)}.")
    return url


def start_sink(stack: ExitStack) -> int:
    port = free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("emailq")), "sink", "--port", str(port),
         "--outbox", str(OUTBOX)],
        stdout=subprocess.DEVNULL, stderr=(VAR / "demo-sink.log").open("wb"),
    )  # fmt: skip
    stack.callback(stop, process)
    import socket

    def listening() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, "the SMTP sink")
    console.print(f"SMTP sink on 127.0.0.1:{port}, writing to {OUTBOX.relative_to(ROOT)}/")
    return port


def start_worker(stack: ExitStack, redis_url: str, sink_port: int) -> None:
    log = VAR / "demo-worker.log"
    log.write_bytes(b"")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "EMAIL_"))},
        "EMAILQ_ENV_FILE": os.devnull,  # the demo never reads real SMTP credentials
        "EMAILQ_DATA_DIR": str(VAR / "data"),  # the demo's tracking store stays in var/
        "REDIS_URL": redis_url,
        "SMTP_SERVER": "127.0.0.1",
        "SMTP_PORT": str(sink_port),
        "SMTP_SECURITY": "none",
        "EMAIL_FROM": "Acme Notifications <notifications@example.com>",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "emailq.worker", "worker", "-Q", "high,normal",
         "-c", "4", "-n", f"demo-{os.getpid()}@%h", "--loglevel=INFO"],
        cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    stack.callback(stop, process)
    wait_until(lambda: " ready." in log.read_text(errors="replace"), "the worker", timeout=60)
    console.print("Worker ready (celery -A emailq.worker worker -Q high,normal).")


def enqueue_mix() -> list[tuple]:
    from emailq.producer import enqueue_email

    report = VAR / "demo-report.csv"
    report.write_text("service,uptime\napi,99.98%\nworker,99.95%\n")
    jobs = [
        ("ops@example.com", "normal", dict(
            subject="System Alert: Database Backup Completed",
            text="The daily database backup completed successfully at 02:00.")),
        ("manager@example.com", "normal", dict(
            subject="Your Weekly Report is Ready",
            html="<h2>System Status Update</h2><table><tr><td>Records</td><td>1,247</td></tr>"
                 "</table><p><a href='https://status.example.com'>View report</a></p>",
            attachments=[str(report)])),
        ("oncall@example.com", "high", dict(
            subject="CRITICAL: CPU at 97% on web-1", text="CPU above 90% for 5 minutes.")),
    ]  # fmt: skip
    for i in range(1, 21):
        name, plan = f"User {i:02d}", ("Premium" if i % 3 == 0 else "Standard")
        fields = {
            "subject": f"{name}, your {plan} account was renewed",
            "text": f"Hello {name},\n\nYour {plan} account has been renewed for another month.\n",
            "html": f"<p>Hello <b>{name}</b>,</p><p>Your {plan} account has been renewed.</p>",
        }
        jobs.append((f"user{i:02d}@example.com", "normal", fields))
    sent = []
    for to, priority, fields in jobs:
        started = time.time()
        result = enqueue_email.delay(to=to, priority=priority, **fields)
        sent.append((result, to, priority, started))
    console.print(f"Enqueued {len(sent)} jobs.")
    return sent


def report(sent: list[tuple], eml_before: int) -> bool:
    table = Table(title="Demo deliveries")
    for column in ("job id", "recipient", "priority", "status", "seconds to delivery"):
        table.add_column(column)
    delivered = 0
    for result, to, priority, started in sent:
        try:
            outcome = result.get(timeout=60)
            status, seconds = "sent", f"{outcome['sent_at'] - started:.2f}"
            delivered += 1
        except Exception as exc:  # report every kind of failure in the table, then fail
            status, seconds = f"failed: {type(exc).__name__}: {exc}", "-"
        table.add_row(result.id, to, priority, status, seconds)
    console.print(table)
    files = len(list(OUTBOX.glob("*.eml"))) - eml_before
    console.print(f"{delivered} of {len(sent)} delivered; {files} new .eml files in {OUTBOX}/")
    return delivered == len(sent) == files


def main() -> int:
    VAR.mkdir(exist_ok=True)
    OUTBOX.mkdir(parents=True, exist_ok=True)
    eml_before = len(list(OUTBOX.glob("*.eml")))
    with ExitStack() as stack:
        redis_url = choose_redis(stack)
        os.environ["REDIS_URL"] = redis_url  # the producer below publishes here
        sink_port = start_sink(stack)
        start_worker(stack, redis_url, sink_port)
        ok = report(enqueue_mix(), eml_before)
    console.print("[green]Demo succeeded.[/]" if ok else "[red]Demo failed.[/]")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
