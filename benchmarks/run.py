"""`make bench`: throughput, latency and memory, as ratios against baselines in the same run.

Starts its own redis-server and a delayable SMTP sink (benchmarks/sink.py), then measures:
`make worker`'s own command (`emailq worker`), our worker in fixed layouts (the real
`celery -A emailq.worker worker` command and configuration) and the plain
Celery baseline (benchmarks/baseline.py: connect and log in per email, prefork -c 2),
with django-post_office beside them; at 0, 20 and 100 ms per reply, with 1,000-recipient
messages, and against a private Postfix (benchmarks/postfix.py) when it can start.
Writes benchmarks/RESULTS.md. `--smoke` runs tiny sizes to prove the harness works.
"""

import argparse
import importlib.util
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import redis

from benchmarks import capacity
from benchmarks.postfix import Postfix
from emailq.core.keys import COUNTERS  # the workers' outcome counts

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
POST_OFFICE = importlib.util.find_spec("post_office") is not None  # the `bench` extra


def cpu_seconds(processes: list[subprocess.Popen]) -> float:
    """User + system CPU of these processes and all their children, so far."""
    total = 0.0
    for process in processes:
        try:
            parent = psutil.Process(process.pid)
            for p in [parent, *parent.children(recursive=True)]:
                times = p.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Bench:
    def __init__(self, sizes: dict[str, int], repeats: int) -> None:
        self.sizes, self.repeats = sizes, repeats
        self.workdir = Path(tempfile.mkdtemp(prefix="emailq-bench-"))
        self.redis_port = free_port()
        self.redis_proc = subprocess.Popen(
            [shutil.which("redis-server"), "--port", str(self.redis_port), "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.redis = redis.Redis(port=self.redis_port)
        for _ in range(100):
            try:
                self.redis.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        self.sink_port = free_port()
        self.env = {
            **os.environ,
            "EMAILQ_ENV_FILE": os.devnull,
            "REDIS_URL": self.redis_url,
            "DATABASE_URL": f"sqlite:///{self.workdir / 'tracking.sqlite3'}",
            "SMTP_SERVER": "127.0.0.1",
            "SMTP_PORT": str(self.sink_port),
            "SMTP_SECURITY": "none",
            "EMAIL_ADDRESS": "bench@example.com",
            "EMAIL_PASSWORD": "password",
            "SMTP_MAX_CONNECTIONS": "32",
            "SINK_PORT": str(self.sink_port),
        }
        os.environ.update({k: v for k, v in self.env.items() if k != "PATH"})
        from emailq.producer import enqueue_bulk, enqueue_email  # after the environment is set

        self.enqueue_email, self.enqueue_bulk = enqueue_email, enqueue_bulk
        self.results: dict[str, object] = {}

    # -- processes ---------------------------------------------------------------------
    def start(self, command: list[str]) -> subprocess.Popen:
        log = (self.workdir / "worker.log").open("ab")
        return subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def our_worker(self, concurrency: int = 32) -> subprocess.Popen:
        return self.start([PY, "-m", "celery", "-A", "emailq.worker", "worker", "-Q", "high,normal",
                           "-c", str(concurrency), "--loglevel=WARNING", "--without-gossip",
                           "--without-mingle"])  # fmt: skip

    def make_worker(self) -> subprocess.Popen:
        """`make worker`'s command, exactly: `emailq worker -Q high,normal --loglevel=INFO`."""
        emailq = str(Path(PY).with_name("emailq"))
        return self.start([emailq, "worker", "-Q", "high,normal", "--loglevel=INFO"])

    def baseline_worker(self) -> subprocess.Popen:
        return self.start([PY, "-m", "celery", "-A", "benchmarks.baseline", "worker", "-Q",
                           "baseline", "-P", "prefork", "-c", "2", "--loglevel=WARNING",
                           "--without-gossip", "--without-mingle"])  # fmt: skip

    @staticmethod
    def stop(process: subprocess.Popen) -> None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    # -- fills -------------------------------------------------------------------------
    def fill_single(self, n: int, prefix: str = "bulk") -> float:
        start = time.perf_counter()
        for i in range(n):
            self.enqueue_email.delay(
                to=f"{prefix}{i}@example.com", subject=f"Notification {i}",
                text=f"Hello {i},\nyour account was renewed.\n",
            )  # fmt: skip
        return n / (time.perf_counter() - start)

    def fill_bulk(self, n: int) -> float:
        recipients = [
            {"to": f"bulk{i}@example.com",
             "context": {"username": f"User {i}", "product": "Acme",
                         "verify_url": f"https://acme.example/v/{i}", "valid_hours": 24}}
            for i in range(n)
        ]  # fmt: skip
        start = time.perf_counter()
        for chunk in range(0, n, 5000):
            self.enqueue_bulk(template="welcome", recipients=recipients[chunk : chunk + 5000])
        return n / (time.perf_counter() - start)

    def fill_wide(self, n: int) -> None:
        """``n`` jobs, each one message to ``wide_recipients`` addresses: one To, the rest Bcc."""
        width = self.sizes["wide_recipients"]
        for i in range(n):
            bcc = [f"wide{i}-{j}@example.com" for j in range(1, width)]
            self.enqueue_email.delay(
                to=f"bulk{i}@example.com", bcc=bcc, subject=f"Notification {i}",
                text=f"Hello {i},\nyour account was renewed.\n",
            )  # fmt: skip

    def fill_baseline(self, n: int) -> None:
        from benchmarks.baseline import send

        for i in range(n):
            send.delay(f"bulk{i}@example.com", f"Notification {i}", "Hello")

    # -- measurements ------------------------------------------------------------------
    def two_workers(self) -> list[subprocess.Popen]:
        """Two processes of 16 threads: both cores, still 32 SMTP connections in all."""
        return [self.our_worker(concurrency=16), self.our_worker(concurrency=16)]

    def drain(
        self, sink, fill, worker, n: int, *, per_recipient: bool = False, cpu: str | None = None
    ) -> float:
        """Messages/s (recipients/s with ``per_recipient``) at the sink, the queue filled first.

        With ``cpu``, also the workers' CPU per message once they send (user + system time
        of every worker process from the 10th message to the last), in results[cpu], in ms.
        """
        rates, cpus = [], []
        for _ in range(self.repeats):
            self.redis.flushall()
            fill(n)
            sink.reset()
            started = worker()
            processes = started if isinstance(started, list) else [started]
            try:
                if cpu is not None:
                    sink.wait_for(min(10, n), timeout=max(120, n / 5))
                    done, before = sink.count.value, cpu_seconds(processes)
                sink.wait_for(n, timeout=max(120, n / 5))
                if cpu is not None:
                    cpus.append(1000 * (cpu_seconds(processes) - before) / max(1, n - done))
                rates.append(sink.recipient_rate() if per_recipient else sink.drain_rate())
            finally:
                for process in processes:
                    self.stop(process)
        if cpus:
            self.results[cpu] = statistics.median(cpus)
        return statistics.median(rates)

    def post_office_drain(self, sink, n: int, recipients: int = 1) -> float | None:
        """django-post_office's `send_queued_mail --processes 2`, 16 threads each.

        Messages/s at the sink; recipients/s when each message has more than one.
        """
        if not POST_OFFICE:
            return None  # the `bench` extra is not installed (the CI smoke run)
        rates = []
        for _ in range(self.repeats):
            self.post_office_fill(n, recipients)
            sink.reset()
            if self.post_office_send().wait():
                raise RuntimeError("send_queued_mail failed")
            sink.wait_for(n, timeout=60)
            rates.append(sink.recipient_rate() if recipients > 1 else sink.drain_rate())
        return statistics.median(rates)

    def post_office_fill(self, n: int, recipients: int = 1) -> None:
        """``n`` emails queued in a fresh post_office database."""
        (self.workdir / "po.sqlite3").unlink(missing_ok=True)
        env = {**self.env, "BENCH_DIR": str(self.workdir)}
        subprocess.run([PY, "-m", "benchmarks.post_office_peer", "fill", str(n), str(recipients)],
                       cwd=ROOT, env=env, check=True)  # fmt: skip

    def post_office_send(self) -> subprocess.Popen:
        """`send_queued_mail`, started; it exits once post_office's queue is empty."""
        return subprocess.Popen(
            [PY, "-m", "benchmarks.post_office_peer", "send"], cwd=ROOT,
            env={**self.env, "BENCH_DIR": str(self.workdir)}, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def postfix_drain(self, postfix: Postfix, n: int, worker=None) -> dict[str, float] | None:
        """Messages/s to Postfix, start-up included; post_office's when no ``worker`` is given.

        The clock runs from the sender's start until the workers' own "sent" count (COUNTERS,
        added once Postfix answered 250 to the end of data) reaches ``n``, or until
        `send_queued_mail` exits; Postfix's log must then show the ``n`` messages queued.
        ``first_s``: when the log first showed one.
        """
        if worker is None and not POST_OFFICE:
            return None
        runs = []
        for _ in range(self.repeats):
            if worker is None:
                self.post_office_fill(n)
            else:
                self.redis.flushall()
                self.fill_single(n)
            before, first = postfix.accepted(), None
            start = time.perf_counter()
            started = worker() if worker else self.post_office_send()
            try:
                while not self._finished(n, None if worker else started):
                    if time.perf_counter() - start > max(120, n / 5):
                        raise TimeoutError(f"not all {n} sent: {self.redis.hgetall(COUNTERS)}")
                    if first is None and postfix.accepted() > before:
                        first = time.perf_counter() - start
                    time.sleep(0.02)
                elapsed = time.perf_counter() - start
            finally:
                if worker is None:
                    started.kill()  # nothing to do once it has exited
                    started.wait()
                else:
                    for process in started if isinstance(started, list) else [started]:
                        self.stop(process)
            if worker is None and started.returncode:
                raise RuntimeError("send_queued_mail failed")
            postfix.wait_accepted(before + n)
            first_s = first if first is not None else float("nan")
            runs.append({"rate": n / elapsed, "first_s": first_s})
        return {key: statistics.median(run[key] for run in runs) for key in ("rate", "first_s")}

    def _finished(self, n: int, post_office: subprocess.Popen | None) -> bool:
        """`send_queued_mail` has exited, or our workers have counted ``n`` sent."""
        if post_office is not None:
            return post_office.poll() is not None
        return int(self.redis.hget(COUNTERS, "sent") or 0) >= n

    def end_to_end(self, sink, n: int) -> float:
        self.redis.flushall()
        sink.reset()
        process = self.our_worker()
        try:
            time.sleep(3)  # the worker is up before the clock starts
            start = time.time()
            self.fill_single(n)
            sink.wait_for(n, timeout=max(120, n / 5))
            return n / (sink.last.value - start)
        finally:
            self.stop(process)

    def priority_latency(self, sink, backlog: int, alerts: int) -> tuple[float, float]:
        self.redis.flushall()
        self.fill_bulk(backlog)
        while not sink.watched.empty():
            sink.watched.get()
        sink.reset()
        process = self.our_worker()
        try:
            sink.wait_for(min(200, backlog // 4), timeout=120)
            sent_at = {}
            for i in range(alerts):
                address = f"oncall{i}@example.com"
                sent_at[address] = time.time()
                self.enqueue_email.delay(to=address, subject="Down", text="!", priority="high")
                time.sleep(0.05)
            latencies = []
            for _ in range(alerts):
                address, at = sink.watched.get(timeout=60)
                latencies.append((at - sent_at[address]) * 1000)
            latencies.sort()
            return statistics.median(latencies), latencies[int(0.99 * (len(latencies) - 1))]
        finally:
            self.stop(process)

    def peak_rss(self, sink, n: int) -> dict[str, float]:
        self.redis.flushall()
        self.fill_bulk(n)
        sink.reset()
        process = self.our_worker()
        samples: list[tuple[int, float]] = []
        try:
            parent = psutil.Process(process.pid)
            while sink.count.value < n:
                procs = [parent, *parent.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in procs if p.is_running())
                samples.append((sink.count.value, rss / 2**20))
                time.sleep(0.5)
        finally:
            self.stop(process)
        early = [rss for done, rss in samples if n * 0.1 <= done <= n * 0.3] or [samples[0][1]]
        late = [rss for done, rss in samples if done >= n * 0.8] or [samples[-1][1]]
        return {"peak_mib": max(r for _, r in samples), "at_10_30pct_mib": max(early),
                "at_80_100pct_mib": max(late)}  # fmt: skip

    def run(self) -> None:
        from benchmarks.sink import Sink

        s, r = self.sizes, self.results
        sink = Sink(self.sink_port, 0)
        try:
            r["enqueue_delay_per_s"] = statistics.median(
                [self._fresh(lambda: self.fill_single(s["enqueue"])) for _ in range(self.repeats)]
            )
            r["enqueue_bulk_per_s"] = statistics.median(
                [self._fresh(lambda: self.fill_bulk(s["enqueue"])) for _ in range(self.repeats)]
            )
            r["drain0_make_worker"] = self.drain(
                sink, self.fill_single, self.make_worker, s["drain0"], cpu="cpu0_make_worker_ms"
            )
            r["drain0_ours"] = self.drain(sink, self.fill_single, self.our_worker, s["drain0"])
            r["drain0_ours_2p"] = self.drain(
                sink, self.fill_single, self.two_workers, s["drain0"], cpu="cpu0_ours_2p_ms"
            )
            r["drain0_ours_bulk"] = self.drain(sink, self.fill_bulk, self.our_worker, s["drain0"])
            r["drain0_ours_bulk_2p"] = self.drain(
                sink, self.fill_bulk, self.two_workers, s["drain0"], cpu="cpu0_bulk_2p_ms"
            )
            r["drain0_baseline"] = self.drain(
                sink, self.fill_baseline, self.baseline_worker, s["drain0_baseline"],
                cpu="cpu0_baseline_ms",
            )  # fmt: skip
            r["drain0_post_office"] = self.post_office_drain(sink, s["drain0"])
            r["wide0_make_worker"] = self.drain(
                sink, self.fill_wide, self.make_worker, s["wide"], per_recipient=True
            )
            r["wide0_post_office"] = self.post_office_drain(sink, s["wide"], s["wide_recipients"])
            r["e2e0_ours"] = self.end_to_end(sink, s["drain0"])
            r["latency_p50_ms"], r["latency_p99_ms"] = self.priority_latency(
                sink, s["backlog"], s["alerts"]
            )
            r["rss"] = self.peak_rss(sink, s["rss"])
        finally:
            sink.stop()
        sink = Sink(self.sink_port, 20)
        try:
            r["drain20_make_worker"] = self.drain(
                sink, self.fill_single, self.make_worker, s["drain20"]
            )
            r["drain20_ours"] = self.drain(sink, self.fill_single, self.our_worker, s["drain20"])
            r["drain20_ours_2p"] = self.drain(
                sink, self.fill_single, self.two_workers, s["drain20"]
            )
            r["drain20_ours_bulk_2p"] = self.drain(
                sink, self.fill_bulk, self.two_workers, s["drain20"]
            )
            r["drain20_baseline"] = self.drain(
                sink, self.fill_baseline, self.baseline_worker, s["drain20_baseline"]
            )
            r["drain20_post_office"] = self.post_office_drain(sink, s["drain20_post_office"])
            r["wide20_make_worker"] = self.drain(
                sink, self.fill_wide, self.make_worker, s["wide"], per_recipient=True
            )
            r["wide20_post_office"] = self.post_office_drain(sink, s["wide"], s["wide_recipients"])
        finally:
            sink.stop()
        sink = Sink(self.sink_port, 100)
        try:
            r["drain100_make_worker"] = self.drain(
                sink, self.fill_single, self.make_worker, s["drain100"]
            )
            r["drain100_make_worker_bulk"] = self.drain(
                sink, self.fill_bulk, self.make_worker, s["drain100_bulk"]
            )
            r["drain100_post_office"] = self.post_office_drain(sink, s["drain100_post_office"])
        finally:
            sink.stop()
        r["capacity"] = capacity.measure(self, Sink)  # starts a Sink of its own
        from benchmarks import memory  # it imports this module: loaded here, not at the top

        r["memory"] = memory.measure(self, Sink, s["memory"])  # a Sink of its own too
        self.run_postfix()

    def run_postfix(self) -> None:
        """Single jobs, and post_office emails, to a private Postfix; skipped if it cannot start."""
        r, n = self.results, self.sizes["postfix"]
        postfix = Postfix(free_port())
        if not postfix.start():
            r["postfix_skipped"] = postfix.error
            print(f"Postfix run skipped: {postfix.error}", file=sys.stderr)
            return
        saved = self.env
        # Postfix offers no AUTH: with EMAIL_PASSWORD set, the worker's login would fail
        # (a ConfigurationError, deferred), so this run sends without logging in.
        self.env = {**saved, "SMTP_PORT": str(postfix.port), "EMAIL_PASSWORD": ""}
        try:
            r["postfix_version"] = postfix.version()
            r["postfix_make_worker"] = self.postfix_drain(postfix, n, self.make_worker)
            r["postfix_ours_2p"] = self.postfix_drain(postfix, n, self.two_workers)
            r["postfix_post_office"] = self.postfix_drain(postfix, n)
        finally:
            self.env = saved
            postfix.stop()

    def _fresh(self, measure) -> float:
        self.redis.flushall()
        return measure()

    def close(self) -> None:
        self.redis_proc.terminate()
        self.redis_proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


SIZES = {
    "full": {"enqueue": 5000, "drain0": 3000, "drain0_baseline": 1000, "drain20": 2000,
             "drain20_baseline": 150, "drain20_post_office": 1000, "backlog": 20000,
             "alerts": 50, "rss": 50000, "drain100": 1000, "drain100_bulk": 2000,
             "drain100_post_office": 500, "wide": 32, "wide_recipients": 1000, "postfix": 2000,
             "memory": 200_000},
    "smoke": {"enqueue": 50, "drain0": 40, "drain0_baseline": 20, "drain20": 20,
              "drain20_baseline": 5, "drain20_post_office": 20, "backlog": 300, "alerts": 5,
              "rss": 200, "drain100": 10, "drain100_bulk": 20, "drain100_post_office": 10,
              "wide": 2, "wide_recipients": 150, "postfix": 20,
              "memory": 400},
}  # fmt: skip


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = cpu
    memory = psutil.virtual_memory().total / 2**30
    return (f"{model}, {psutil.cpu_count()} cores, {memory:.0f} GiB RAM, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}")  # fmt: skip


def report(results: dict, sizes: dict, repeats: int, smoke: bool) -> str:
    r = results
    ratio = lambda a, b: f"{a / b:.1f}×" if b else "n/a"  # noqa: E731
    rss = r["rss"]
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {machine()}. Shared cores: figures are noisy; ratios from one run are what",
        "to compare. Every figure is the median of "
        f"{repeats} runs unless it says otherwise. Sizes: {sizes}.",
        "",
        "Command: `make bench` (`.venv/bin/python -m benchmarks.run`)"
        + (" with `--smoke`: tiny sizes, figures meaningless" if smoke else "")
        + ".",
        "",
        "## Drain rate (messages/s; the queue is filled first, then the worker starts)",
        "",
        "| sender | 0 ms per reply | 20 ms per reply |",
        "|---|---|---|",
        f"| `make worker` as documented (`emailq worker`: a process per core × 16 threads, "
        f"32 connections shared, INFO logs) | {r['drain0_make_worker']:.0f} | "
        f"{r['drain20_make_worker']:.0f} |",
        f"| emailq worker, threads -c 32, ≤32 SMTP connections | {r['drain0_ours']:.0f} | "
        f"{r['drain20_ours']:.0f} |",
        f"| emailq, 2 worker processes × 16 threads, ≤32 connections in all | "
        f"{r['drain0_ours_2p']:.0f} | {r['drain20_ours_2p']:.0f} |",
        f"| emailq worker, threads -c 32, jobs from `enqueue_bulk` | "
        f"{r['drain0_ours_bulk']:.0f} | - |",
        f"| emailq, 2 processes × 16 threads, jobs from `enqueue_bulk` | "
        f"{r['drain0_ours_bulk_2p']:.0f} | {r['drain20_ours_bulk_2p']:.0f} |",
        f"| plain Celery, connect + login per email, prefork -c 2 | {r['drain0_baseline']:.0f} | "
        f"{r['drain20_baseline']:.0f} |",
        f"| django-post_office 3.x, send_queued_mail, 2 processes × 16 threads | "
        f"{_fmt(r['drain0_post_office'])} | {_fmt(r['drain20_post_office'])} |",
        f"| **ratio, best emailq single-job layout / plain Celery** | "
        f"**{ratio(_best(r, 0), r['drain0_baseline'])}** | "
        f"**{ratio(_best(r, 20), r['drain20_baseline'])}** |",
        "",
        "## Other figures",
        "",
        "| figure | value |",
        "|---|---|",
        f"| end-to-end rate, enqueue and send at once, 0 ms | {r['e2e0_ours']:.0f} msg/s |",
        f"| `enqueue_email.delay` | {r['enqueue_delay_per_s']:.0f} jobs/s |",
        f"| `enqueue_bulk` (template rendered per recipient, 25 jobs per task) | "
        f"{r['enqueue_bulk_per_s']:.0f} "
        "recipients/s |",
        f"| high-priority latency with {sizes['backlog']} normal jobs queued, p50 | "
        f"{r['latency_p50_ms']:.0f} ms |",
        f"| same, p99 | {r['latency_p99_ms']:.0f} ms |",
        f"| worker peak RSS over {sizes['rss']} jobs | {rss['peak_mib']:.0f} MiB |",
        f"| RSS at 10–30% of the run / at 80–100% | {rss['at_10_30pct_mib']:.0f} MiB / "
        f"{rss['at_80_100pct_mib']:.0f} MiB |",
        f"| worker CPU per message, 0 ms, single jobs: `make worker` / 2 × 16 threads | "
        f"{_ms(r.get('cpu0_make_worker_ms'))} / {_ms(r.get('cpu0_ours_2p_ms'))} |",
        f"| same, jobs from `enqueue_bulk`, 2 × 16 threads | {_ms(r.get('cpu0_bulk_2p_ms'))} |",
        f"| same, plain Celery (connect + login per email) | {_ms(r.get('cpu0_baseline_ms'))} |",
        "",
        *_new_sections(r, sizes),
        "## Against the targets",
        "",
        "Single jobs at 20 ms and 100 ms are measured as users run them, through `make worker`'s",
        "own command; at 0 ms also the best fixed layout. Every layout keeps 32 SMTP connections.",
        "django-post_office ratios use its figure from this run; without the `bench` extra",
        "they fall back to the figures quoted for this machine (568 and 114 msg/s), marked.",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        *_targets(r),
        "",
        LIMITS,
        "",
        capacity.section(r["capacity"]),
        "",
        _memory_section(r["memory"]),
    ]
    return "\n".join(lines)


POST_OFFICE_QUOTED = {"drain0": 568, "drain20": 114}


def _fmt(rate: float | None) -> str:
    return f"{rate:.0f}" if rate else "not installed"


def _new_sections(r: dict, sizes: dict) -> list[str]:
    """100 ms per reply, 1,000-recipient messages, and Postfix."""
    width, jobs, n = sizes["wide_recipients"], sizes["wide"], sizes["postfix"]
    lines = [
        "## At 100 ms per reply (a provider across an ocean; messages/s, queue filled first)",
        "",
        "| sender | messages/s |",
        "|---|---|",
        f"| `make worker`, single jobs | {r['drain100_make_worker']:.0f} |",
        f"| `make worker`, jobs from `enqueue_bulk` | {r['drain100_make_worker_bulk']:.0f} |",
        f"| django-post_office 3.x, send_queued_mail, 2 processes × 16 threads | "
        f"{_fmt(r['drain100_post_office'])} |",
        "",
        LIMITS_100,
        "",
        f"## {width:,}-recipient messages (recipients/s, first RCPT TO to the last message taken)",
        "",
        f"{jobs} jobs, each one `enqueue_email.delay(to=one, bcc=[{width - 1:,} more])`; "
        "post_office sends the",
        "same message (`recipients=[one], bcc=[...]`).",
        "",
        "| sender | 0 ms per reply | 20 ms per reply |",
        "|---|---|---|",
        f"| `make worker` | {r['wide0_make_worker']:.0f} | {r['wide20_make_worker']:.0f} |",
        f"| django-post_office 3.x, 2 processes × 16 threads | {_fmt(r['wide0_post_office'])} | "
        f"{_fmt(r['wide20_post_office'])} |",
        "",
        LIMITS_WIDE,
        "",
    ]
    if "postfix_skipped" in r:
        return [*lines, "## Against a real MTA: Postfix", "",
                f"Skipped: {r['postfix_skipped']}.", ""]  # fmt: skip
    return [
        *lines,
        f"## Against a real MTA: Postfix {r['postfix_version']} (messages/s, start-up included)",
        "",
        POSTFIX_SETUP.format(n=n),
        "",
        "| sender | messages/s | first message accepted after |",
        "|---|---|---|",
        f"| `make worker` | {_postfix_row(r['postfix_make_worker'])} |",
        f"| emailq, 2 worker processes × 16 threads | {_postfix_row(r['postfix_ours_2p'])} |",
        f"| django-post_office 3.x, send_queued_mail, 2 processes × 16 threads | "
        f"{_postfix_row(r['postfix_post_office'])} |",
        "",
        LIMITS_POSTFIX,
        "",
    ]


def _postfix_row(run: dict[str, float] | None) -> str:
    if not run:
        return "not installed | -"
    first = run["first_s"]
    return f"{run['rate']:.0f} | " + ("-" if math.isnan(first) else f"{first:.1f} s")


LIMITS_100 = """\
What limits it: round trips. Pipelined, a message costs two (MAIL, RCPT and DATA in one
write, then the end of data), and a new session every 25 messages adds the greeting,
EHLO, AUTH and QUIT: 32 connections cap near 32 / (2.16 × 0.1 s) ≈ 150 msg/s, single
and bulk jobs alike; below that, the cores. Django's SMTP backend waits for every reply,
four round trips a message (≤ 80 msg/s on 32 connections), and post_office opens new
sessions, and a new pool of processes, for every batch of 100."""

LIMITS_WIDE = """\
What limits it: above 100 recipients (`MAX_PIPELINED_RECIPIENTS`, worker/pipelining.py)
our sender writes the RCPTs in pipelined groups of 100, about 13 round trips for a
1,000-recipient message where Django's smtplib takes over 1,000: at 20 ms that alone
caps post_office near 1,600 recipients/s on 32 connections. Ours is then bound by CPU:
both ends handle a thousand RCPT commands and replies per message in Python (the sink is
aiosmtpd), and the ledger writes a field per recipient. 32 jobs make a small sample, so
this row moves more than the others between runs. With the cores busy, in two paired
runs, our worker (in a session of its own, like every worker here) ran these jobs about
half as fast as the same command in the bench's own session, where the sink and
post_office run (Linux autogroup scheduling)."""


POSTFIX_SETUP = """\
A private Postfix instance (benchmarks/postfix.py: its own config, queue and data
directories, smtpd on 127.0.0.1 only, every message to the discard transport, queue
files on this machine's disk). {n} single jobs each. Ours: the clock runs from the
worker's start until the workers' own "sent" count (added after Postfix's 250 to the
end of data) reaches {n}; Postfix's log must then show {n} messages queued.
post_office: `send_queued_mail` from its start to its exit. Postfix offers no AUTH, so
these runs set no EMAIL_PASSWORD: with one set, the worker defers every job (a
ConfigurationError, "the server offers no login") and sends nothing."""

LIMITS_POSTFIX = """\
What limits it: at this size, start-up weighs heavily (the last column). `make worker`
starts a supervisor, which imports the CLI, before its two Celery processes; post_office's
`send_queued_mail` is one short Django process (its emails, like our jobs, were queued
before the clock started). After start-up, CPU, as at 0 ms per reply, with Postfix's
processes on the same two cores: in one run they used 3.4 s of CPU for 2,000 messages,
two worker processes × 16 threads 7.3 s, start-up included. Postfix takes 25 messages
per session from us (our cap), pipelined, no AUTH, each written to its queue on disk
before its 250."""


LIMITS = """## What limits it, and what was tried

- **0 ms per reply, single jobs: Celery's per-task work.** Profiled with py-spy (`--gil`,
  one worker process × 16 threads, 3,000 jobs). Before this round, a single job's CPU
  went about a fifth to publishing task events (one PUBLISH per turn of Celery's event
  loop), a tenth each to the result (a GET, then MULTI/SETEX/PUBLISH/EXEC), the ack
  (another MULTI/EXEC) and the ledger's record; the rest to fetching, Celery's request
  and pool machinery, the SMTP commands and tracking. Done since: task events published
  in batches every 0.1 s (`worker/consumer.py`); the ledger record, the lock release, the
  outcome counter, the stored result and the ack of a sent job in one script
  (`worker/completion.py`); the ledger's scripts over a connection of each thread's own
  (`core/store.py` `ThreadScript`), without redis-py's per-command pool work; hiredis
  for redis-py; the From address parsed once. The worker sends Redis 3.6 commands per
  single job where it sent about 18 (tests/integration/test_round_trips.py counts them).
  Then, in a second round: one run of the fetch script takes as many jobs as the process
  has free prefetch slots, up to 16 (`core/fetch.py`; 2.9 jobs per run while draining a
  backlog), so a busy worker refills its threads with one round trip and one pass of
  Celery's event loop; and the text of a result in its task-succeeded event is Python's
  `repr` where the result is plain data, not Celery's streaming `saferepr`, which took 6%
  of a job's CPU (`worker/resultrepr.py`).
  **Before and after**, measured with `benchmarks/cpu_per_job.py` (worker CPU time, user
  and system, from the 200th to the 5,000th job; the build before any of this work,
  commit 9527914, run first in each of 5 back-to-back pairs on this machine, idle
  otherwise): 2.22–2.37 ms per job before, 0.99–1.13 ms now; ratios 0.43–0.48 per pair,
  **median 0.46** (another 4 pairs earlier: 0.44–0.46). **Less than half.** The same pairs
  gave 0.49 and 0.54 for the build with the first round only. A job's CPU now goes (py-spy
  `--gil`, GIL-holding samples) about 45% to the task body (the ledger's two scripts 17%,
  SMTP 11%, the message bytes 4%, checking the payload 3%), 16% to Celery's event loop
  (the fetch and Celery receiving the message 8%, polling 4%), 16% to the three task
  events, 10% to the tracking store's writes, and 0.5% to the result's text; a third of
  the CPU time is system time (socket calls and the GIL's hand-offs between 17 threads).
  Halving it again would mean leaving Celery's one-message-per-job model for single
  jobs, or turning off the task events Flower shows.
- **Bulk jobs:** `enqueue_bulk` sends 25 jobs per task, so Celery's cost is shared. A
  chunk's thread keeps one connection and pipelines across messages (RFC 2920 3.1): one
  message's end of data and the next one's MAIL, RCPT and DATA in one write, one round
  trip per message instead of two (`worker/stream.py`). Each job still takes its own
  ledger lock and record (no email sent twice after a crash) and its own tracking events,
  which is now most of a bulk job's CPU.
- **20 ms per reply: round trips, then CPU.** Step by step, MAIL, RCPT, DATA and the end of
  data are four round trips per message, capping 32 connections near 400 msg/s. With ESMTP
  PIPELINING, used whenever the server offers it, MAIL, RCPT and DATA go in one write: two
  round trips per message (800 msg/s on 32 connections), one for bulk chunks. Below those
  ceilings the two cores are the limit, as at 0 ms. The sink models latency (each reply
  leaves N ms after its command arrived), so a client that waits for every reply pays N ms
  per command and a pipelining one pays it once per group.
- **20 ms, against plain Celery:** the baseline drains only 150 messages at about 10 msg/s,
  so one message more or less per second moves the ratio by 10%.
- **Many recipients:** above 100 recipients a message's RCPTs go in pipelined groups of
  100 (RFC 2920 warns against groups larger than both ends buffer): ten round trips for
  1,000 recipients where each used to take one.
- **Memory:** see "Memory over 200,000 jobs" below. Two causes were found and fixed: at
  start-up the tracking writer read every "queued" event waiting in Redis (200,000 here)
  into memory before writing any, a 40 MiB peak that malloc kept; it now writes each
  batch of 2,000 before reading the next. And with 16 threads, glibc's per-thread malloc
  arenas fragmented apart (tracemalloc saw nothing growing while malloc's free-but-kept
  memory rose): `emailq worker` starts its processes with `MALLOC_ARENA_MAX=2` (the
  Dockerfile sets it too). Together: about 110 MiB per process, flat, where processes sat
  at 197–235 MiB before. What tracemalloc still sees grow is Celery's set of the last
  1,000 successful task ids, which stops at its cap.
- **Enqueue:** `delay()` is one Redis command after validation (a Lua script pushes the
  job and the queue's wake-up entry for idle workers), plus the "queued" tracking event:
  one RPUSH, or a pipeline with the idempotency key's window when there is one.
- **Fetch:** a worker takes jobs and records them as unacknowledged in one Lua script,
  as many per call as it has free prefetch slots, up to 16 (`core/fetch.py`).
  `enqueue_bulk` renders each recipient's template once, checks each address's domain
  once per process, and publishes one task per 25 jobs.
"""


def _memory_section(results: dict) -> str:
    from benchmarks import memory

    return memory.section(results)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _best(r: dict, delay_ms: int) -> float:
    """The best single-job rate at ``delay_ms`` of `make worker`, 1 × 32 and 2 × 16 threads."""
    return max(r[f"drain{delay_ms}_{layout}"] for layout in ("make_worker", "ours", "ours_2p"))


def _targets(r: dict) -> list[str]:
    # Single jobs: `make worker` as documented, and at 0 ms also the best of it, one process
    # x 32 threads and two x 16. Every layout keeps 32 SMTP connections.
    best0 = _best(r, 0)
    bulk0 = max(r["drain0_ours_bulk"], r["drain0_ours_bulk_2p"])
    bulk20 = r["drain20_ours_bulk_2p"]
    po0, po20 = r["drain0_post_office"], r["drain20_post_office"]
    tag0 = "" if po0 else " (quoted)"
    tag20 = "" if po20 else " (quoted)"
    po0, po20 = po0 or POST_OFFICE_QUOTED["drain0"], po20 or POST_OFFICE_QUOTED["drain20"]
    documented0, documented20 = r["drain0_make_worker"], r["drain20_make_worker"]
    rows = [
        ("20 ms, single jobs, `make worker` as documented: ≥40× plain Celery",
         documented20 / r["drain20_baseline"], 40, "×"),
        (f"20 ms, single jobs, `make worker` as documented: ≥4× django-post_office{tag20}",
         documented20 / po20, 4, "×"),
        (f"0 ms, single jobs, `make worker` as documented: ≥1.2× django-post_office{tag0}",
         documented0 / po0, 1.2, "×"),
        (f"0 ms, single jobs, best layout: ≥1.2× django-post_office{tag0}", best0 / po0, 1.2, "×"),
        (f"0 ms, bulk jobs: ≥2× django-post_office{tag0}", bulk0 / po0, 2, "×"),
        (f"20 ms, bulk jobs: ≥3× django-post_office{tag20}", bulk20 / po20, 3, "×"),
        ("stretch: 20 ms, bulk jobs ≥900 msg/s", bulk20, 900, " msg/s"),
        ("`enqueue_bulk` ≥5,000 recipients/s", r["enqueue_bulk_per_s"], 5000, "/s"),
        ("`enqueue_email.delay` ≥1,500/s", r["enqueue_delay_per_s"], 1500, "/s"),
    ]  # fmt: skip
    po100 = r["drain100_post_office"]
    for name, ours, goal in (
        ("100 ms single jobs (`make worker`): ≥1.8× django-post_office", "", 1.8),
        ("100 ms bulk jobs (`make worker`): ≥3× django-post_office", "_bulk", 3),
    ):
        rows.append((name, r[f"drain100_make_worker{ours}"] / po100 if po100 else None, goal, "×"))
    lines = [
        f"| {name} | {value:.1f}{unit} | {'yes' if value >= goal else 'no'} |"
        if value is not None
        else f"| {name} | not installed | - |"
        for name, value, goal, unit in rows
    ]
    p99 = r["latency_p99_ms"]
    lines.append(f"| high-priority p99 < 500 ms | {p99:.0f} ms | {'yes' if p99 < 500 else 'no'} |")
    rss = r["rss"]
    growth = rss["at_80_100pct_mib"] - rss["at_10_30pct_mib"]
    lines.append(
        f"| RSS flat over the run | +{growth:.0f} MiB | {'yes' if growth < 10 else 'no'} |"
    )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to prove it runs")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sizes = SIZES["smoke" if args.smoke else "full"]
    repeats = args.repeats or 1  # a run of everything takes about 45 min; --repeats 3: medians
    bench = Bench(sizes, repeats)
    try:
        bench.run()
    finally:
        bench.close()
    text = report(bench.results, sizes, repeats, args.smoke)
    print(text)
    out = args.out or (None if args.smoke else ROOT / "benchmarks" / "RESULTS.md")
    if out:
        out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
