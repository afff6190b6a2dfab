"""Redis capacity: what one job costs Redis, and how many jobs one Redis carries.

``measure(bench, Sink)`` runs against the Bench's own redis-server, with `make worker`'s
command (``emailq worker``: a process per core, 16 threads each) and a 0 ms sink:

1. idle: the worker running with empty queues, for a few seconds: what idle worker
   processes cost Redis (their polls, heartbeats and timers);
2. per job, for ``enqueue_email.delay`` jobs and ``enqueue_bulk`` jobs, the enqueue (the
   worker processes paused with SIGSTOP) and the drain (resumed) apart, and both at once
   (enqueued while the workers run): ``CONFIG RESETSTAT``, then ``INFO commandstats``,
   ``INFO stats`` (bytes) and ``INFO cpu`` (the Redis process) after each phase; drains
   less the idle rate over their duration;
3. a ``MONITOR`` trace of a smaller run: the commands a job sends (top level), which
   script each EVALSHA runs and what runs inside it, for a backlog and for jobs that
   trickle in (workers idle between them). The backlog's trace is the load replayed next;
4. saturation: the traced commands replayed with fresh ids (each replayer on queues of its
   own): one round trip per command from many connections (python processes), and
   pipelined through ``redis-cli --pipe``, which drives Redis towards a full core; the
   latter once more with a replica attached, for the replication cost.

``section(results)`` renders the markdown for benchmarks/RESULTS.md.
``python -m benchmarks.capacity [--smoke]`` runs it alone and prints the section.

The Sink listens on ``bench.sink_port``: call ``measure`` while no other Sink runs.
"""

import argparse
import ast
import contextlib
import hashlib
import importlib.util
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import redis

ROOT = Path(__file__).resolve().parents[1]

SIZES = {
    "full": {"single": 1500, "bulk": 2500, "concurrent_single": 1000, "concurrent_bulk": 1500,
             "trace_single": 200, "trace_bulk": 250, "idle_s": 5.0, "load_s": 4.0,
             "pipes": 4, "rt_procs": 3, "rt_conns": 16},
    "smoke": {"single": 60, "bulk": 100, "concurrent_single": 40, "concurrent_bulk": 50,
              "trace_single": 20, "trace_bulk": 50, "idle_s": 1.5, "load_s": 1.0,
              "pipes": 2, "rt_procs": 1, "rt_conns": 4},
}  # fmt: skip

KINDS = ("single", "bulk")
SIDES = ("producer", "worker")  # the backlog's two sides: what the replay replays
PHASES = ("producer", "worker", "concurrent")  # concurrent: enqueued while the workers run
SEGMENTS = ("producer", "worker", "trickle")  # trickle: jobs spaced out, workers idle between
TRICKLE_GAP_S = 0.02  # between single jobs (a bulk task of 25: 25 times this)
# Commands of the measuring client itself, never a job's.
OWN = {"config|resetstat"}
# The trace's segment marks: ECHO capacity:<segment> from the measuring client.
MARK = b"capacity:"
# Scripts run on timers (kombu's binding sweep and refresh, lock renewals every 5 s).
PERIODIC_SCRIPTS = ("SWEEP_BINDINGS", "REFRESH_BINDING", "_RENEW")
# kombu's queue lists: the queue and its priority sub-queues (kombu's PRIORITY_STEPS).
QUEUE_KEYS = {
    q + s for q in (b"high", b"normal") for s in (b"", b"\x06\x163", b"\x06\x166", b"\x06\x169")
}
IDS = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\b[0-9a-f]{32}\b")
LINE = re.compile(rb"^\d+\.\d+ \[\d+ ([^\]]*)\] (.*)$", re.S)
ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"', re.S)
ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|.)", re.S)
SIMPLE_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b"}


# -- measuring Redis -------------------------------------------------------------------


def _snapshot(client: redis.Redis) -> dict[str, Any]:
    info = client.info("commandstats", "stats", "cpu")
    return {
        "at": time.perf_counter(),
        "cmds": {
            key.removeprefix("cmdstat_"): (value["calls"], value["usec"])
            for key, value in info.items()
            if key.startswith("cmdstat_")
        },
        "in": info["total_net_input_bytes"],
        "out": info["total_net_output_bytes"],
        "repl_out": info.get("total_net_repl_output_bytes", 0),
        "cpu": info["used_cpu_sys"] + info["used_cpu_user"],
    }


class Meter:
    """Redis's counters over one phase: ``start()``, the phase, ``read()``.

    The commands the meter itself sends (its INFO, its polls through ``note``) are
    taken out of the counts.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.own: Counter[str] = Counter()
        self.before: dict[str, Any] = {}

    def start(self) -> None:
        self.client.config_resetstat()
        self.before = _snapshot(self.client)
        self.own = Counter({"info": 1})  # the snapshot's INFO counts after it answers

    def note(self, command: str) -> None:
        self.own[command] += 1

    def read(self) -> dict[str, Any]:
        after, before = _snapshot(self.client), self.before
        calls: dict[str, float] = {}
        usec: dict[str, float] = {}
        for name, (count, us) in after["cmds"].items():
            count0, us0 = before["cmds"].get(name, (0, 0))
            n = count - count0 - self.own.get(name, 0)
            if name not in OWN and n > 0:
                calls[name] = n
                usec[name] = max(0, us - us0)
        return {
            "seconds": after["at"] - before["at"],
            "calls": calls,
            "usec": usec,
            "bytes_in": after["in"] - before["in"],
            "bytes_out": after["out"] - before["out"],
            "repl_out": after["repl_out"] - before["repl_out"],
            "cpu_s": after["cpu"] - before["cpu"],
        }


def _per_job(
    raw: dict[str, Any], jobs: int, idle: dict[str, Any] | None = None, rate: float = 0.0
) -> dict:
    """A phase's counters per job, less the idle rate over the phase's duration."""
    secs = raw["seconds"]

    def less(value: float, rate: float) -> float:
        return max(0.0, value - rate * secs) / jobs

    rates = idle["rates"] if idle else {"calls": {}, "usec": {}}
    calls = {c: less(n, rates["calls"].get(c, 0.0)) for c, n in raw["calls"].items()}
    usec = {c: less(n, rates["usec"].get(c, 0.0)) for c, n in raw["usec"].items()}
    flat = idle["rates"] if idle else {"bytes_in": 0.0, "bytes_out": 0.0, "cpu_s": 0.0}
    return {
        "jobs": jobs,
        "seconds": secs,
        "jobs_per_s": rate or (jobs / secs if secs else float("nan")),
        "calls": {c: n for c, n in sorted(calls.items()) if n >= 0.005},
        "commands": sum(calls.values()),
        "command_us": sum(usec.values()),
        "bytes_in": less(raw["bytes_in"], flat["bytes_in"]),
        "bytes_out": less(raw["bytes_out"], flat["bytes_out"]),
        "cpu_us": less(raw["cpu_s"], flat["cpu_s"]) * 1e6,
    }


# -- the worker processes --------------------------------------------------------------


def _processes(worker: subprocess.Popen) -> list[psutil.Process]:
    parent = psutil.Process(worker.pid)
    return [parent, *parent.children(recursive=True)]


def _signal(processes: list[psutil.Process], sig: int) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(sig)


def _wait_ready(ctl: redis.Redis, worker: subprocess.Popen, timeout: float = 90) -> int:
    """Until every worker process waits on the wake-up lists; returns how many there are.

    ``emailq worker`` starts a process per core (its supervisor's default).
    """
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = len(_processes(worker)) - 1  # the supervisor talks to no Redis
        waiting = [c for c in ctl.client_list() if c.get("cmd") == "brpop"]
        if children >= expected and len(waiting) >= children:
            return children
        time.sleep(0.2)
    raise TimeoutError(f"fewer than {expected} worker processes came up")


def _wait_acked(ctl: redis.Redis, meter: Meter | None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if meter is not None:
            meter.note("hlen")
        if not ctl.hlen("unacked"):
            return
        time.sleep(0.05)
    raise TimeoutError("jobs still unacknowledged")


# -- the MONITOR trace -----------------------------------------------------------------


def script_names() -> dict[str, str]:
    """SHA1 -> ``module.NAME`` of every Lua script in our sources, kombu, Celery and redis-py.

    Read from the source files (nothing is imported), as the module-level strings that
    call ``redis.call``/``redis.pcall`` or that a class keeps (redis-py's lock scripts).
    """
    files = [p for d in ("core", "worker", "producer") for p in (ROOT / d).rglob("*.py")]
    for module in ("kombu.transport.redis", "celery.backends.redis", "redis.lock",
                   "limits.storage.redis", "limits.aio.storage.redis"):  # fmt: skip
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            continue
        if spec is not None and spec.origin:
            files.append(Path(spec.origin))
    names: dict[str, str] = {}
    for path in files:
        try:
            tree = ast.parse(path.read_text())
        except (OSError, SyntaxError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.Constant):
                continue
            value = node.value.value
            if not isinstance(value, str) or "redis." not in value or "call(" not in value:
                continue
            target = node.targets[0]
            name = getattr(target, "id", None) or getattr(target, "attr", None) or "?"
            sha = hashlib.sha1(value.encode()).hexdigest()  # noqa: S324 - Redis's script id
            names[sha] = f"{path.stem}.{name}"
    return names


def _unescape(raw: bytes) -> bytes:
    if b"\\" not in raw:
        return raw

    def one(match: re.Match) -> bytes:
        code = match[1]
        if len(code) == 3 and code[:1] == b"x":
            return bytes([int(code[1:], 16)])
        return SIMPLE_ESCAPES.get(code, code)

    return ESCAPE.sub(one, raw)


def _label(args: list[bytes], names: dict[str, str]) -> str:
    name = args[0].upper()
    if name in (b"EVALSHA", b"EVAL") and len(args) > 1:
        sha = args[1].decode() if name == b"EVALSHA" else hashlib.sha1(args[1]).hexdigest()  # noqa: S324
        return f"{name.decode()} {names.get(sha, sha[:10])}"
    if name in (b"SCRIPT", b"CLIENT", b"CONFIG", b"OBJECT", b"MEMORY") and len(args) > 1:
        return f"{name.decode()} {args[1].upper().decode()}"
    if len(args) < 2 or name in (b"MULTI", b"EXEC", b"DISCARD", b"PING", b"INFO", b"ECHO"):
        return name.decode()
    key = IDS.sub(b"*", args[1])  # the key (or channel), ids left out
    return f"{name.decode()} {key.decode(errors='replace')}"


def _fetches(label: str) -> bool:
    """The label of kombu's take, our fetch script (``core/fetch.py`` FETCH_SCRIPT)."""
    return label.startswith("EVAL") and label.rsplit(".", 1)[-1].upper().startswith("FETCH")


def _periodic(args: list[bytes]) -> bool:
    """A command a worker or producer process sends on a timer, whatever the jobs."""
    name = args[0].upper()
    rest = b" ".join(args[1:4])
    return (
        (name == b"PUBLISH" and args[1].endswith(b"worker.heartbeat"))
        or b"unacked_mutex" in rest  # kombu's restore sweep: its lock
        or (name == b"ZRANGE" and args[1] == b"unacked_index")  # and its read
        or (name in (b"EXISTS", b"SET") and args[1] == b"emailq:marker")
        or (name == b"LPOP" and args[1] == b"emailq:events")  # moving "queued" events
        or b"emailq:delayed" in rest  # the delayed-job mover
        or b"emailq:monitor:" in rest  # the host monitor's election
        or name in (b"PING", b"INFO", b"SELECT", b"HELLO", b"AUTH", b"CLIENT")
        or name in (b"SUBSCRIBE", b"PSUBSCRIBE", b"UNSUBSCRIBE", b"PUNSUBSCRIBE")
    )


def analyse(
    lines: list[bytes], ctl_addr: bytes, names: dict[str, str], jobs: dict[str, int]
) -> dict:
    """Per-job top-level commands, what each script runs inside, and the replay template
    (the producer and worker segments' commands, in order)."""
    segments = {side: {"top": Counter(), "inner": Counter(), "inside": {}, "periodic": Counter(),
                       "batched": 0} for side in SEGMENTS}  # fmt: skip
    template: list[list[list[bytes]]] = []
    transactions: dict[bytes, list[list[bytes]]] = {}
    side: str | None = None
    script: tuple[dict, str, list[str]] | None = None  # (segment, label, inner commands)

    def close_script() -> None:
        nonlocal script
        if script is not None:
            seg, label, inner = script
            if _fetches(label):  # the worker's take: say whether it took a job
                took = "rpop" in (i.lower() for i in inner)
                seg["top"][label] -= 1
                label = f"{label} ({'took a job' if took else 'found none'})"
                seg["top"][label] += 1
            kinds = seg["inside"].setdefault(label, Counter())
            kinds["calls"] += 1
            kinds.update(i.lower() for i in inner)
        script = None

    for line in lines:
        match = LINE.match(line)
        if match is None:
            continue
        addr, rest = match[1], match[2]
        args = [_unescape(a) for a in ARG.findall(rest)]
        if not args:
            continue
        if addr == b"lua":
            if script is not None:
                script[2].append(args[0].decode(errors="replace"))
                script[0]["inner"][args[0].decode(errors="replace").lower()] += 1
            continue
        close_script()
        if addr == ctl_addr:
            if args[0].upper() == b"ECHO" and args[1].startswith(MARK):
                mark = args[1][len(MARK) :].decode()
                side = mark if mark in SEGMENTS else None
            continue
        if side is None:
            continue
        seg = segments[side]
        label = _label(args, names)
        if _periodic(args) or any(p in label for p in PERIODIC_SCRIPTS):
            seg["periodic"][label] += 1
            script = ({"top": Counter(), "inner": Counter(), "inside": {}}, label, [])
            continue
        seg["top"][label] += 1
        if args[0].upper() in (b"EVALSHA", b"EVAL"):
            script = (seg, label, [])
        name = args[0].upper()
        replayed = side in SIDES and name not in (b"BRPOP", b"BLPOP", b"BLMOVE", b"BZPOPMIN")
        if name == b"MULTI":
            transactions[addr] = [args]
        elif addr in transactions:
            transactions[addr].append(args)
            if name in (b"EXEC", b"DISCARD"):
                group = transactions.pop(addr)
                seg["batched"] += len(group) - 1  # one round trip for the block
                if replayed:
                    template.append(group)
        elif replayed:
            template.append([args])
    close_script()

    out: dict[str, Any] = {"jobs": jobs["worker"], "trickle_jobs": jobs["trickle"],
                           "template": template}  # fmt: skip
    for name, seg in segments.items():
        n = max(1, jobs[name])

        def per_job(counter: Counter, n: int = n) -> dict[str, float]:
            return {k: v / n for k, v in sorted(counter.items()) if v}

        out[name] = {
            "top": per_job(seg["top"]),
            "commands": sum(seg["top"].values()) / n,
            "round_trips": (sum(seg["top"].values()) - seg["batched"]) / n,
            "inner": per_job(seg["inner"]),
            "inside": {
                label: {k: v / kinds["calls"] for k, v in kinds.items() if k != "calls"}
                for label, kinds in seg["inside"].items()
            },
            "periodic": dict(seg["periodic"]),
        }
    return out


class Tracer:
    """MONITOR on its own connection, read by a thread until the end mark."""

    def __init__(self, port: int) -> None:
        self.client = redis.Redis(port=port)
        self.monitor = self.client.monitor()
        self.monitor.__enter__()  # sends MONITOR and waits for its OK
        self.lines: list[bytes] = []
        self.thread = threading.Thread(target=self._read, name="capacity-monitor", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        connection = self.monitor.connection
        while True:
            try:
                line = connection.read_response()
            except (redis.ConnectionError, OSError):
                return
            if isinstance(line, str):
                line = line.encode()
            self.lines.append(line)
            if MARK + b"end" in line:
                return

    def close(self, timeout: float = 60) -> list[bytes]:
        self.thread.join(timeout)
        self.monitor.connection.disconnect()
        self.client.close()
        return self.lines


# -- replaying the trace ---------------------------------------------------------------


def encode(group: list[list[bytes]], replayer: int) -> bytes:
    """A group of traced commands as RESP, with the replayer's own queues and ids."""
    suffix = b"%04x" % replayer
    out = []
    for args in group:
        out.append(b"*%d\r\n" % len(args))
        for arg in args:
            if arg in QUEUE_KEYS:
                arg = b"capacity:%d:%s" % (replayer, arg)
            elif IDS.search(arg):
                arg = IDS.sub(lambda m: m[0][:-4] + suffix, arg)
            out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def _reply_end(buf: bytes, pos: int) -> int:
    """The end of the RESP reply starting at ``pos``, or -1 while it is incomplete."""
    need = 1
    size = len(buf)
    while need:
        if pos >= size:
            return -1
        newline = buf.find(b"\r\n", pos)
        if newline < 0:
            return -1
        kind = buf[pos]
        need -= 1
        if kind == 36:  # $: a bulk string
            length = int(buf[pos + 1 : newline])
            pos = newline + 2 + (length + 2 if length >= 0 else 0)
            if pos > size:
                return -1
        elif kind == 42:  # *: an array
            length = int(buf[pos + 1 : newline])
            pos = newline + 2
            need += max(0, length)
        else:
            pos = newline + 2
    return pos


def _round_trips(port, template, replayers, start, stop, out) -> None:  # noqa: ANN001
    """One process of the round-trip load: a connection per replayer, lock-step."""
    plans = [[(encode(g, r), len(g)) for g in template] for r in replayers]
    socks = []
    for _ in replayers:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(sock)
    out.put(("ready", 0, 0, 0.0))
    start.wait()
    deadline = stop.value
    cpu0 = time.process_time()
    done = errors = 0
    steps = [0] * len(socks)
    bufs = [b""] * len(socks)
    length = len(template)
    while time.time() < deadline:
        for i, sock in enumerate(socks):
            sock.sendall(plans[i][steps[i]][0])
        for i, sock in enumerate(socks):
            need, buf, pos = plans[i][steps[i]][1], bufs[i], 0
            while need:
                end = _reply_end(buf, pos)
                if end < 0:
                    chunk = sock.recv(1 << 16)
                    if not chunk:
                        raise ConnectionError("Redis closed a load connection")
                    buf = buf[pos:] + chunk
                    pos = 0
                    continue
                errors += buf[pos] == 45  # -: an error reply
                pos, need = end, need - 1
            bufs[i] = buf[pos:]
            done += plans[i][steps[i]][1]
            steps[i] = (steps[i] + 1) % length
    out.put(("done", done, errors, time.process_time() - cpu0))
    for sock in socks:
        sock.close()


def round_trip_load(
    client: redis.Redis, port: int, trace: dict, procs: int, conns: int, seconds: float
) -> dict[str, Any]:
    """The trace replayed from procs × conns connections, one round trip per command."""
    ctx = mp.get_context("spawn")
    start, stop, out = ctx.Event(), ctx.Value("d", 0.0), ctx.Queue()
    workers = [
        ctx.Process(
            target=_round_trips,
            args=(
                port,
                trace["template"],
                list(range(p * conns, (p + 1) * conns)),
                start,
                stop,
                out,
            ),
            daemon=True,
        )  # fmt: skip
        for p in range(procs)
    ]
    for w in workers:
        w.start()
    for _ in workers:
        out.get(timeout=120)
    stop.value = time.time() + seconds
    meter = Meter(client)
    meter.start()
    start.set()
    time.sleep(max(0.0, stop.value - time.time()))
    raw = meter.read()
    results = [out.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(10)
        if w.is_alive():
            w.terminate()
    commands = sum(len(g) for g in trace["template"])
    done = sum(r[1] for r in results)
    jobs = done / commands * trace["jobs"]
    return _load_figures(raw, jobs, {
        "connections": procs * conns, "processes": procs,
        "errors": sum(r[2] for r in results),
        "generator_cpu": sum(r[3] for r in results) / raw["seconds"],
    })  # fmt: skip


def pipe_load(
    client: redis.Redis, port: int, trace: dict, pipes: int, seconds: float
) -> dict[str, Any] | None:
    """The trace replayed through ``pipes`` ``redis-cli --pipe`` processes, for ``seconds``."""
    cli = shutil.which("redis-cli")
    if cli is None:
        return None
    blocks = [b"".join(encode(g, 1000 + i) for g in trace["template"]) for i in range(pipes)]
    written = [0] * pipes
    children0 = os.times()
    procs = [
        subprocess.Popen(
            [cli, "-p", str(port), "--pipe"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        for _ in range(pipes)
    ]
    meter = Meter(client)
    meter.start()
    deadline = time.perf_counter() + seconds

    def feed(i: int) -> None:
        stdin = procs[i].stdin
        assert stdin is not None
        try:
            while time.perf_counter() < deadline:
                stdin.write(blocks[i])
                written[i] += 1
            stdin.close()
        except BrokenPipeError:
            pass

    feeders = [threading.Thread(target=feed, args=(i,)) for i in range(pipes)]
    for f in feeders:
        f.start()
    for f in feeders:
        f.join()
    outputs = []
    for proc in procs:
        assert proc.stdout is not None
        outputs.append(proc.stdout.read())
        proc.wait()
    raw = meter.read()
    children1 = os.times()
    errors = replies = 0
    for text in outputs:
        match = re.search(rb"errors: (\d+), replies: (\d+)", text)
        if match:
            errors += int(match[1])
            replies += int(match[2])
    generator = (children1.children_user + children1.children_system) - (
        children0.children_user + children0.children_system
    )
    return _load_figures(raw, sum(written) * trace["jobs"], {
        "pipes": pipes, "errors": errors, "replies": replies,
        "generator_cpu": generator / raw["seconds"],
    })  # fmt: skip


def _load_figures(raw: dict[str, Any], jobs: float, extra: dict[str, Any]) -> dict[str, Any]:
    secs = raw["seconds"]
    busy = raw["cpu_s"] / secs
    return {
        "jobs": jobs,
        "seconds": secs,
        "jobs_per_s": jobs / secs,
        "redis_cpu": busy,  # of one core
        "cpu_us_per_job": raw["cpu_s"] / jobs * 1e6 if jobs else float("nan"),
        "at_full_core": jobs / secs / busy if busy > 0.05 else float("nan"),
        "commands_per_s": sum(raw["calls"].values()) / secs,
        "repl_bytes_per_job": raw["repl_out"] / jobs if jobs else 0.0,
        **extra,
    }


def with_replica(bench: Any, run) -> tuple[dict[str, Any] | None, str]:  # noqa: ANN001
    """``run()`` with a replica of the Bench's Redis attached (on this same machine)."""
    server = shutil.which("redis-server")
    port = _free_port()
    workdir = Path(bench.workdir) / "replica"
    workdir.mkdir(exist_ok=True)
    replica = subprocess.Popen(
        [server, "--port", str(port), "--replicaof", "127.0.0.1", str(bench.redis_port),
         "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if client.info("replication").get("master_link_status") == "up":
                    break
            except redis.ConnectionError:
                pass
            time.sleep(0.1)
        else:
            return None, "the replica did not sync within 60 s"
        return run(), ""
    finally:
        replica.terminate()
        replica.wait(30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the measurement -------------------------------------------------------------------


def size_for(bench: Any) -> str:
    """The Bench's sizes say full or smoke (benchmarks.run's smoke drains 40 jobs)."""
    return "full" if bench.sizes.get("drain0", 0) >= 1000 else "smoke"


def measure(bench: Any, sink_cls: Any, *, size: str | None = None) -> dict[str, Any]:
    """Redis's cost per job and what one Redis carries; see the module's docstring."""
    started = time.perf_counter()
    sizes = SIZES[size or size_for(bench)]
    port = bench.redis_port
    ctl = redis.Redis(port=port, single_connection_client=True)
    ctl_addr = ctl.client_info()["addr"].encode()
    names = script_names()
    results: dict[str, Any] = {"sizes": dict(sizes), "size": size or size_for(bench)}
    load_before = os.getloadavg()[0]
    bench.redis.flushall()
    sink = sink_cls(bench.sink_port, 0)
    worker = None
    try:
        worker = bench.make_worker()
        fills = {"single": bench.fill_single, "bulk": bench.fill_bulk}
        fills["single"](20, prefix="warm")
        fills["bulk"](50)
        sink.wait_for(70, timeout=120)
        workers = _wait_ready(ctl, worker)
        time.sleep(1.0)
        processes = _processes(worker)
        results["workers"] = {"processes": workers, "threads": _threads()}

        meter = Meter(ctl)
        meter.start()
        time.sleep(sizes["idle_s"])
        idle = meter.read()
        secs = idle["seconds"]
        idle["rates"] = {
            "calls": {c: n / secs for c, n in idle["calls"].items()},
            "usec": {c: n / secs for c, n in idle["usec"].items()},
            "bytes_in": idle["bytes_in"] / secs,
            "bytes_out": idle["bytes_out"] / secs,
            "cpu_s": idle["cpu_s"] / secs,
        }
        results["idle"] = {
            "seconds": secs,
            "processes": workers,
            "calls_per_s": dict(sorted(idle["rates"]["calls"].items())),
            "commands_per_s": sum(idle["rates"]["calls"].values()),
            "bytes_in_per_s": idle["rates"]["bytes_in"],
            "bytes_out_per_s": idle["rates"]["bytes_out"],
            "cpu_us_per_s": idle["rates"]["cpu_s"] * 1e6,
        }

        for kind in KINDS:
            n = sizes[kind]
            bench.redis.flushall()
            _plant_marker(bench.redis)
            _signal(processes, signal.SIGSTOP)
            try:
                meter.start()
                fills[kind](n)
                producer = meter.read()
                sink.reset()
                meter.start()
            finally:
                _signal(processes, signal.SIGCONT)
            sink.wait_for(n, timeout=max(120, n / 5))
            rate = sink.drain_rate()
            _wait_acked(ctl, meter)
            time.sleep(1.0)  # Celery flushes its buffered task events on a timer
            drained = meter.read()

            # Steady state: enqueued while the workers run, so the queue stays short and
            # idle consumers are woken per job. Both sides together.
            n_both = sizes[f"concurrent_{kind}"]
            bench.redis.flushall()
            _plant_marker(bench.redis)
            sink.reset()
            meter.start()
            begun = time.time()
            fills[kind](n_both)
            sink.wait_for(n_both, timeout=max(120, n_both / 5))
            both_rate = n_both / (sink.last.value - begun)
            _wait_acked(ctl, meter)
            time.sleep(1.0)
            both = meter.read()
            results[kind] = {
                "producer": _per_job(producer, n),
                "worker": _per_job(drained, n, idle, rate),
                "concurrent": _per_job(both, n_both, idle, both_rate),
            }

        for kind in KINDS:
            n = sizes[f"trace_{kind}"]
            bench.redis.flushall()
            _plant_marker(bench.redis)
            tracer = Tracer(port)
            try:
                _signal(processes, signal.SIGSTOP)
                try:
                    ctl.echo(MARK + b"producer")
                    fills[kind](n)
                    sink.reset()
                    ctl.echo(MARK + b"worker")
                finally:
                    _signal(processes, signal.SIGCONT)
                sink.wait_for(n, timeout=max(120, n / 5))
                _wait_acked(ctl, None)
                time.sleep(1.0)
                ctl.echo(MARK + b"trickle")
                trickled = _trickle(bench, kind, n)
                sink.wait_for(n + trickled, timeout=120)
                _wait_acked(ctl, None)
                time.sleep(1.0)
            finally:
                ctl.echo(MARK + b"end")
                lines = tracer.close()
            jobs = {"producer": n, "worker": n, "trickle": trickled}
            results[kind]["trace"] = analyse(lines, ctl_addr, names, jobs)
    finally:
        if worker is not None:
            bench.stop(worker)
        sink.stop()

    saturation: dict[str, Any] = {"failed": []}

    def guarded(name: str, load: Any) -> dict[str, Any] | None:
        # A replay that fails leaves its row empty; the counts above stand on their own.
        bench.redis.flushall()
        try:
            return load()
        except Exception as exc:  # noqa: BLE001 - reported in the section
            saturation["failed"].append(f"{name}: {type(exc).__name__}: {exc}")
            return None

    for kind in KINDS:
        trace = results[kind]["trace"]
        saturation[kind] = {
            "round_trips": guarded(f"{kind} round trips", lambda t=trace: round_trip_load(
                ctl, port, t, sizes["rt_procs"], sizes["rt_conns"], sizes["load_s"])),
            "pipelined": guarded(f"{kind} pipelined", lambda t=trace: pipe_load(
                ctl, port, t, sizes["pipes"], sizes["load_s"])),
        }  # fmt: skip
    saturation["replica"], saturation["replica_note"] = (
        guarded("replica", lambda: with_replica(bench, lambda: pipe_load(
            ctl, port, results["single"]["trace"], sizes["pipes"], sizes["load_s"])))
        or (None, "the replica run failed")
    )  # fmt: skip
    bench.redis.flushall()
    results["saturation"] = saturation
    for kind in KINDS:
        results[kind]["trace"].pop("template")
    results["scripts"] = {sha: name for sha, name in names.items()}
    results["ceiling"] = ceiling(results)
    results["seconds"] = time.perf_counter() - started
    results["loadavg"] = [load_before, os.getloadavg()[0]]
    ctl.close()
    return results


def _trickle(bench: Any, kind: str, n: int) -> int:
    """Jobs spaced out (a single job every 20 ms, a bulk task of 25 every 0.5 s), so the
    workers wait between them; returns how many."""
    count = max(10, n // 2)
    if kind == "single":
        for i in range(count):
            bench.fill_single(1, prefix=f"trickle{i}-")
            time.sleep(TRICKLE_GAP_S)
        return count
    tasks = max(2, count // 25)
    for _ in range(tasks):
        bench.fill_bulk(25)
        time.sleep(25 * TRICKLE_GAP_S)
    return tasks * 25


def _plant_marker(client: redis.Redis) -> None:
    # A worker reports a flushed Redis at CRITICAL once per loss; the bench flushes on
    # purpose, so the marker is planted again the way the first worker plants it.
    client.set("emailq:marker", f"{time.time():.0f}", nx=True)


def _threads() -> int:
    """``emailq worker``'s threads per process (worker/supervisor.py THREADS), read from
    the source: importing it would load the worker's Celery app here."""
    tree = ast.parse((ROOT / "worker" / "supervisor.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "THREADS":
            return int(node.value.value)  # type: ignore[attr-defined]
    return 0


BASES = ("real", "round_trips", "pipelined")


def _per_core(us: float) -> float:
    """Jobs/s one core carries at ``us`` µs of Redis CPU per job."""
    return 1e6 / us if us and us == us else float("nan")


def ceiling(results: dict[str, Any]) -> dict[str, Any]:
    """Jobs/s and worker processes one Redis core carries, on three measures of its CPU
    per job: what the real producer and workers cost it, and the two replays."""
    idle = results["idle"]
    idle_us = idle["cpu_us_per_s"] / max(1, idle["processes"])  # per idle process, per s
    sat = results["saturation"]
    replica, pipelined = sat.get("replica"), sat["single"]["pipelined"]
    factor = (
        replica["cpu_us_per_job"] / pipelined["cpu_us_per_job"]
        if replica and pipelined and pipelined["cpu_us_per_job"] > 0
        else float("nan")
    )
    out: dict[str, Any] = {"idle_us_per_process_s": idle_us, "replica_cpu_factor": factor}
    for kind in KINDS:
        real = results[kind]["producer"]["cpu_us"] + results[kind]["worker"]["cpu_us"]
        both = results[kind]["concurrent"]["cpu_us"]
        rate = results[kind]["worker"]["jobs_per_s"] / max(1, results["workers"]["processes"])
        cpu = {
            "real": real,
            "round_trips": (sat[kind]["round_trips"] or {}).get("cpu_us_per_job", float("nan")),
            "pipelined": (sat[kind]["pipelined"] or {}).get("cpu_us_per_job", float("nan")),
        }

        def processes(us: float, rate: float = rate) -> float:
            # A busy process costs Redis rate × µs per job, plus its idle polling.
            return _per_core(rate * us + idle_us) if us == us else float("nan")

        out[kind] = {
            "cpu_us_per_job": real,
            "jobs_per_s": _per_core(real),
            "concurrent_cpu_us_per_job": both,
            "concurrent_jobs_per_s": _per_core(both),
            "worker_rate_per_process": rate,
            "cpu": cpu,
            "per_core": {k: _per_core(v) for k, v in cpu.items()},
            "processes": {k: processes(v) for k, v in cpu.items()},
            "sentinel_per_core": {k: _per_core(v * factor) for k, v in cpu.items()},
            "sentinel_processes": {k: processes(v * factor) for k, v in cpu.items()},
        }
    return out


# -- the report ------------------------------------------------------------------------


def _f(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:
        return "-"
    if abs(value) >= 100 or digits == 0:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


PHASE_TITLES = {
    "producer": "enqueue",
    "worker": "drain",
    "concurrent": "both at once",
    "trickle": "trickle",
}


def section(results: dict[str, Any]) -> str:
    r = results
    cols = [(kind, phase) for kind in KINDS for phase in PHASES]
    phase = {key: r[key[0]][key[1]] for key in cols}
    tcols = [(kind, seg) for kind in KINDS for seg in SEGMENTS]
    traces = {key: r[key[0]]["trace"][key[1]] for key in tcols}
    ceil, sat, idle = r["ceiling"], r["saturation"], r["idle"]
    procs, threads = r["workers"]["processes"], r["workers"]["threads"]
    header = "| {} | " + " | ".join(f"{k}: {PHASE_TITLES[p]}" for k, p in cols) + " |"
    rule = "|---" * (len(cols) + 1) + "|"
    lines = [
        "## Redis capacity: what a job costs Redis, and what one Redis carries",
        "",
        f"`benchmarks/capacity.py` ({r['size']} sizes: {r['sizes']['single']} single jobs "
        f"and {r['sizes']['bulk']} bulk recipients per backlog, "
        f"{r['sizes']['concurrent_single']} and {r['sizes']['concurrent_bulk']} both at once; "
        f"{r['seconds']:.0f} s in all). The worker is `make worker`'s command (`emailq "
        f"worker`: {procs} processes × {threads} threads); the sink answers at once (0 ms).",
        "",
        "- **enqueue**: `enqueue_email.delay` / `enqueue_bulk` with the worker processes "
        "paused (SIGSTOP): the producer's cost alone;",
        "- **drain**: the same backlog once they resume: the worker's cost per job;",
        "- **both at once**: jobs enqueued as fast as the producer goes while the workers "
        "run: both sides together.",
        "",
        "Counters are Redis's own (`CONFIG RESETSTAT`, then `INFO commandstats`, `INFO "
        "stats`, `INFO cpu` of the Redis process); drain and both-at-once are less the idle rate "
        f"(measured over {idle['seconds']:.0f} s, queues empty) times their duration. A bulk "
        "job is one recipient (25 per task). Redis, the workers, the sink and the producer "
        "share this machine's 2 cores (1-minute load average "
        + " then ".join(f"{x:.1f}" for x in r.get("loadavg", []))
        + " over the run: other work shared them too): CPU figures are the Redis process's "
        "own CPU time, counts do not depend on load.",
        "",
        "### Per job, by command (every call Redis ran, those inside Lua scripts included)",
        "",
        header.format("command"),
        rule,
    ]
    names = sorted({c for key in cols for c in phase[key]["calls"]})
    for name in names:
        cells = [_f(phase[key]["calls"].get(name, 0.0)) for key in cols]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    rows = [
        ("**commands Redis ran**", lambda p: _f(p["commands"])),
        ("bytes in (requests)", lambda p: _f(p["bytes_in"], 0)),
        ("bytes out (replies)", lambda p: _f(p["bytes_out"], 0)),
        ("µs inside commands (`commandstats` usec: wall time, so it grows when Redis is "
         "preempted)", lambda p: _f(p["command_us"], 1)),
        ("**Redis CPU µs** (`used_cpu_sys` + `used_cpu_user`)", lambda p: _f(p["cpu_us"], 1)),
        ("rate (jobs/s; drain: the sink's first to last message)",
         lambda p: _f(p["jobs_per_s"], 0)),
    ]  # fmt: skip
    for title, cell in rows:
        lines.append(f"| {title} | " + " | ".join(cell(phase[key]) for key in cols) + " |")

    theader = "| {} | " + " | ".join(f"{k}: {PHASE_TITLES[p]}" for k, p in tcols) + " | {} |"
    lines += [
        "",
        f"### Commands sent per job, and what each script runs inside (MONITOR trace of "
        f"{r['single']['trace']['jobs']} single and {r['bulk']['trace']['jobs']} bulk jobs; "
        f"the trickle: {r['single']['trace']['trickle_jobs']} single jobs 20 ms apart and "
        f"{r['bulk']['trace']['trickle_jobs']} bulk jobs in tasks of 25 0.5 s apart, so the "
        "workers wait for each; the trickle counts both sides)",
        "",
        "Commands sent on timers (heartbeats, the delayed-job mover, kombu's restore sweep, "
        'the marker check, moving "queued" events, the producer\'s INFO memory check) are '
        "left out: they are the idle table's. Ids in keys are shown as `*`.",
        "",
        theader.format("command sent", "runs inside, per call"),
        "|---" * (len(tcols) + 2) + "|",
    ]
    labels = sorted({lab for key in tcols for lab in traces[key]["top"]})
    for label in labels:
        cells = [_f(traces[key]["top"].get(label, 0.0)) for key in tcols]
        inside: dict[str, float] = {}
        for key in tcols:
            inside = inside or traces[key]["inside"].get(label, {})
        shown = ", ".join(f"{k} {_f(v, 1)}" for k, v in sorted(inside.items()))
        lines.append(f"| `{label}` | " + " | ".join(cells) + f" | {shown} |")
    rows2 = [
        ("**commands sent**", lambda t: _f(t["commands"])),
        ("round trips (a MULTI…EXEC block is one; at most)", lambda t: _f(t["round_trips"])),
        ("commands run inside scripts", lambda t: _f(sum(t["inner"].values()))),
    ]
    for title, cell in rows2:
        lines.append(f"| {title} | " + " | ".join(cell(traces[key]) for key in tcols) + " | |")

    n = max(1, idle["processes"])
    lines += [
        "",
        f"### Idle cost ({idle['processes']} worker processes, queues empty)",
        "",
        "| figure | all processes | per process |",
        "|---|---|---|",
        f"| commands/s | {_f(idle['commands_per_s'], 1)} | {_f(idle['commands_per_s'] / n, 1)} |",
        f"| bytes in/s | {_f(idle['bytes_in_per_s'], 0)} | {_f(idle['bytes_in_per_s'] / n, 0)} |",
        f"| bytes out/s | {_f(idle['bytes_out_per_s'], 0)} | "
        f"{_f(idle['bytes_out_per_s'] / n, 0)} |",
        f"| Redis CPU µs/s | {_f(idle['cpu_us_per_s'], 0)} | "
        f"{_f(ceil['idle_us_per_process_s'], 0)} "
        f"({ceil['idle_us_per_process_s'] / 1e4:.2f}% of a core) |",
        "",
        "By command (calls/s, all processes): "
        + ", ".join(f"`{c}` {_f(v, 2)}" for c, v in idle["calls_per_s"].items())
        + ". Per process: a BRPOP on the wake-up lists and a fetch script each second, the "
        "delayed-job mover and the move of producers' events twice a second, kombu's "
        "restore sweep every 5 s, a heartbeat every 2 s, the marker check every 5 s. The "
        "CPU figure includes Redis's own timers (`hz 10`), which an idle Redis pays too.",
    ]

    lines += _saturation_lines(r, sat, ceil)
    lines += _ceiling_lines(r, ceil, sat)
    lines += ["", BEYOND, "", *_waste_lines(r)]
    return "\n".join(lines)


def _saturation_lines(r: dict, sat: dict, ceil: dict) -> list[str]:
    def row(title: str, fig: dict | None) -> str:
        if not fig:
            return f"| {title} | - | - | - | - | - |"
        return (
            f"| {title} | {_f(fig['jobs_per_s'], 0)} | {fig['redis_cpu'] * 100:.0f}% | "
            f"{_f(fig['cpu_us_per_job'], 1)} | {_f(fig['at_full_core'], 0)} | "
            f"{fig['generator_cpu'] * 100:.0f}% |"
        )

    rt = sat["single"]["round_trips"] or {"connections": "-", "processes": "-"}
    lines = [
        "",
        "### What one Redis serves on this machine",
        "",
        "The first ceiling is one core divided by the Redis CPU a real job cost (enqueue + "
        "drain; and both at once). Those "
        "runs leave Redis mostly idle, and an idle Redis spends more per command (an "
        "event-loop pass and a read and a write per command). The ceiling is checked by "
        "replaying the traced commands (every id made fresh, "
        "every replayer on queues of its own, blocking BRPOPs and timers left out) against "
        f"this Redis: one round trip per command (a MULTI…EXEC block in one) from "
        f"{rt['connections']} connections "
        f"({rt['processes']} python processes in lock-step), and pipelined through "
        "`redis-cli --pipe`, which leaves Redis a whole core. Redis and the load "
        "generator compete for the same 2 cores, so the round-trip replay cannot drive "
        "Redis to 100% here: its at-full-core figure is jobs/s ÷ Redis CPU share, an "
        "extrapolation; the pipelined replay comes closest to a full core, as far as the "
        "other work on the machine lets it.",
        "",
        "| load | jobs/s | Redis CPU (of a core) | Redis CPU µs/job | jobs/s at a full core |"
        " generator CPU |",
        "|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        c = ceil[kind]
        lines.append(
            f"| {kind}: enqueue + drain (real producer and workers) | "
            f"{_f(r[kind]['worker']['jobs_per_s'], 0)} | - | {_f(c['cpu_us_per_job'], 1)} | "
            f"**{_f(c['jobs_per_s'], 0)}** | - |"
        )
        lines.append(
            f"| {kind}: both at once (enqueue while the workers run) | "
            f"{_f(r[kind]['concurrent']['jobs_per_s'], 0)} | - | "
            f"{_f(c['concurrent_cpu_us_per_job'], 1)} | {_f(c['concurrent_jobs_per_s'], 0)} | - |"
        )
        lines.append(row(f"{kind}: replay, a round trip per command", sat[kind]["round_trips"]))
        lines.append(row(f"{kind}: replay, pipelined (`redis-cli --pipe`)", sat[kind]["pipelined"]))
    if sat.get("replica"):
        lines.append(row("single: pipelined, with a replica attached", sat["replica"]))
    errors = sum(
        (sat[k]["round_trips"] or {}).get("errors", 0)
        + (sat[k]["pipelined"] or {}).get("errors", 0)
        for k in KINDS
    )
    lines += ["", f"Error replies during the replays: {errors}."]
    if sat.get("failed"):
        lines.append("Replays that failed: " + "; ".join(sat["failed"]) + ".")
    return lines


def _ceiling_lines(r: dict, ceil: dict, sat: dict) -> list[str]:
    s, b = ceil["single"], ceil["bulk"]
    replica = sat.get("replica")
    repl_bytes = replica["repl_bytes_per_job"] if replica else float("nan")
    in_bytes = r["single"]["producer"]["bytes_in"] + r["single"]["worker"]["bytes_in"]
    factor = ceil["replica_cpu_factor"]
    measured = replica and factor == factor
    sentinel = (
        f"about {repl_bytes:,.0f} bytes of replication stream per single job (measured: "
        f"{repl_bytes / in_bytes:.1f}× what clients send, since scripts replicate their "
        "effects and the fetch script's `HSET unacked` copies the whole message) and "
        f"{(factor - 1) * 100:.0f}% more Redis CPU per job in the pipelined replay (the "
        "replica ran on this machine too, so that figure is rough)"
        if measured
        else "a replication stream of about the write commands' bytes (not measured: "
        + (sat.get("replica_note") or "no replica run")
        + ")"
    )

    def trio(fig: dict[str, float]) -> str:
        return " / ".join(_f(fig[k], 0) for k in BASES)

    rows = [
        ("Redis CPU µs per job", lambda c: " / ".join(_f(c["cpu"][k], 1) for k in BASES)),
        ("**jobs/s one Redis core carries**", lambda c: f"**{trio(c['per_core'])}**"),
        ("worker processes at the rate measured here", lambda c: trio(c["processes"])),
        ("Sentinel pair: jobs/s" if measured else "Sentinel pair: jobs/s (not measured)",
         lambda c: trio(c["sentinel_per_core"])),
        ("Sentinel pair: worker processes", lambda c: trio(c["sentinel_processes"])),
    ]  # fmt: skip
    lines = [
        "",
        "### The ceiling",
        "",
        "Each cell: on the CPU per job the real producer and workers cost (Redis lightly "
        "loaded, on a machine others were using too: the conservative figure) / on the "
        "round-trip replay (the same commands, one round trip each, from "
        f"{(sat['single']['round_trips'] or {}).get('connections', '-')} connections: the "
        "likely figure at "
        "saturation) / on the pipelined replay (an upper bound no real client reaches).",
        "",
        "| | single jobs | bulk jobs |",
        "|---|---|---|",
    ]
    for title, cell in rows:
        lines.append(f"| {title} | {cell(s)} | {cell(b)} |")
    lines += [
        "",
        f"- **One Redis (one core):** plan on about **{_f(s['jobs_per_s'], 0)} single** or "
        f"**{_f(b['jobs_per_s'], 0)} bulk jobs/s** (enqueue and drain both on it), and "
        f"expect it to carry up to about {_f(s['per_core']['round_trips'], 0)} / "
        f"{_f(b['per_core']['round_trips'], 0)} before it saturates: as Redis gets busier "
        "each event-loop pass serves more clients, and a command costs it less. Worker "
        f"processes: at the rate each made here ({_f(s['worker_rate_per_process'], 0)} single "
        f"/ {_f(b['worker_rate_per_process'], 0)} bulk msg/s per process of 16 threads, 0 ms "
        "relay, on 2 shared cores) the table's count; at another rate r, divide the jobs/s "
        "by r. Idle processes cost "
        f"{ceil['idle_us_per_process_s'] / 1e4:.2f}% of a core each (100 idle processes: "
        f"{ceil['idle_us_per_process_s'] / 100:.0f}%). Redis runs commands on one thread: "
        "past one core it queues, it does not scale; keep it under 50-70%.",
        f"- **A Sentinel pair (master + one replica):** the replica serves no reads here "
        "(every client asks Sentinel for the master), so it adds no capacity; it costs the "
        f"master {sentinel}. Sentinels send a few commands per second each.",
    ]
    return lines


BEYOND = """### Beyond one Redis: what works today

Every process reads one `REDIS_URL` (`config/settings.py`), and everything of a job lives
behind it: the `high` and `normal` queues, the result backend (`core/celeryconfig.py`:
`broker_url` and `result_backend` are both `REDIS_URL`), the ledger and locks, the delayed
set, dead letters, counters, the circuit breaker and the rate limit (`core/store.py`).
`redis://`, `rediss://` and `sentinel://` URLs work; Redis Cluster does not (kombu's
Redis transport has no cluster mode, and the fetch script takes several queue keys at once).

- **Split by tenant or producer: works today, as separate deployments.** Give each group
  of applications its own Redis (`REDIS_URL=redis://redis-a/0` for one, `redis-b` for the
  other) and run a worker group per Redis with the same variable
  (`REDIS_URL=redis://redis-a/0 emailq worker -Q high,normal`). Each group then has its
  own queues, ledger, dead letters, delayed jobs, counters and Flower; `emailq` CLI
  commands (`status`, `dlq`...) act on the Redis their `REDIS_URL` names, so run them once
  per Redis. The tracking database (`DATABASE_URL`) can be shared: job ids are UUIDs. Two
  things do not span the split: `SMTP_RATE_LIMIT` and the circuit breaker are counted per
  Redis, so a provider account shared by two groups needs its limit divided between them;
  and an `idempotency_key` de-duplicates only within one Redis, so a producer must always
  use the same one.
- **Workers per queue: works today.** `emailq worker -Q high` and `emailq worker -Q normal`
  run separate worker groups on the same Redis (more workers, not more Redis).
- **Split by priority across Redis instances: not built.** A producer process has one
  `REDIS_URL` and its Celery app one broker, so `high` and `normal` cannot go to different
  Redis instances from the same application; per-queue broker URLs (e.g. a
  `REDIS_URL_HIGH`) and a router would be needed, and each worker group would also need
  the ledger, results and counters of its own Redis.
- **Sharding one queue over several Redis instances (by job id): not built.**"""


# What the waste table looks for in the trace: (does a top-level command's label match,
# where it is issued, what it could be). Rows whose commands were not sent are left out.
WASTE: list[tuple[Any, str, str]] = [
    (
        lambda lab: lab.startswith("SCRIPT EXISTS"),
        "`SCRIPT EXISTS`: redis-py sends it (its own round trip) before a pipeline that "
        "runs a registered `Script` with `client=pipe` (`worker/ledger.py` `Ledger.record`, "
        "`Ledger.defer`)",
        "run the EVALSHA without the `Script` wrapper, or the whole record as one script",
    ),
    (
        lambda lab: lab.startswith("HINCRBY emailq:counters"),
        "`HINCRBY emailq:counters`: `worker/counters.py` `count`, a round trip of its own",
        "one more line in the ledger's record script",
    ),
    (
        lambda lab: lab.startswith(("HSET emailq:job:", "EXPIRE emailq:job:")),
        "`HSET` + `EXPIRE emailq:job:*` sent apart from the lock release "
        "(`worker/ledger.py` `Ledger.record`)",
        "one record script: fields, EXPIRE, release, counter",
    ),
    (
        lambda lab: lab.startswith(
            (
                "GET celery-task-meta",
                "SET celery-task-meta",
                "SETEX celery-task-meta",
                "PUBLISH celery-task-meta",
            )
        ),
        "the result backend: `SETEX` + `PUBLISH celery-task-meta-*` per task (per chunk "
        "of 25 for bulk), plus Celery's read-before-write `GET` where it is still made "
        "(`core/backends.py` `RedisBackend`); the PUBLISH reaches nobody unless a caller "
        "waits in `AsyncResult.get()`",
        "already one round trip (a plain pipeline); it is part of the contract (README: "
        "results kept a week, `AsyncResult.get()`), so only `ignore_result=True`, a "
        "change of contract, removes it",
    ),
    (
        lambda lab: lab.startswith("PUBLISH /") and "celeryev/task" in lab,
        "task events: `PUBLISH /0.celeryev/task.multi`, Celery's buffered "
        "task-received/started/succeeded events (`worker_send_task_events = True` in "
        "`core/celeryconfig.py`), sent whether or not Flower listens",
        "off unless Flower runs (`celery control enable_events` turns them on at run time)",
    ),
    (
        lambda lab: lab.startswith(("ZREM unacked_index", "HDEL unacked")),
        "the ack: `ZREM unacked_index` + `HDEL unacked`, kombu's `QoS.ack`",
        "one script (with the MULTI/EXEC below: four commands become one)",
    ),
    (
        lambda lab: lab in ("MULTI", "EXEC"),
        "`MULTI`/`EXEC`: kombu's ack is a transactional pipeline (and so is Celery's own "
        "result write, where it is still used)",
        "`transaction=False` pipelines or scripts",
    ),
    (
        lambda lab: lab.startswith("RPUSH emailq:events"),
        'the "queued" tracking event: `RPUSH emailq:events`, after the publish '
        "(`producer/publishing.py` `_confirm`; bulk: one per 100 jobs)",
        "inside `PUT_SCRIPT` (`core/fetch.py`) for single jobs: one round trip per delay()",
    ),
    (
        lambda lab: _fetches(lab) and "found none" in lab,
        "empty fetches (`core/fetch.py` `AtomicFetch`): a fetch that took fewer jobs than "
        "it had room for emptied the queues, and its channel goes back to waiting; but "
        "every wake-up entry (up to `WAKE_CAP`, 64, per burst) still makes a waiting "
        "channel fetch, and while a backlog drains most find its jobs already taken. An "
        "empty fetch runs 8 LINDEX over kombu's priority sub-queues, which nothing here "
        "publishes to",
        "a fetch that empties the queues could also drop their wake-up entries (a burst "
        "would then wake one channel, not as many as it has jobs); `priority_steps=[0]` "
        "(2 LINDEX instead of 8), which would strand jobs already in sub-queues",
    ),
    (
        lambda lab: lab.startswith("LLEN high"),
        "`LLEN high`: a running chunk asks whether alerts wait every `YIELD_CHECK_S` "
        "(50 ms), per thread (`worker/chunks.py` `deliver_chunk` -> `worker/tasks.py` "
        "`_alerts_waiting`)",
        "one check per process per 50 ms shared by its threads",
    ),
    (
        lambda lab: lab.startswith("BRPOP emailq:wake"),
        "`BRPOP` on the wake-up lists (`core/fetch.py`): when jobs trickle in, one per job, "
        "the wake-up itself",
        "the price of waking at once rather than within 1 s",
    ),
]


def _waste_lines(r: dict) -> list[str]:
    def per_job(kind: str, match: Any, sides: tuple[str, ...]) -> float:
        trace = r[kind]["trace"]
        return sum(v for side in sides for k, v in trace[side]["top"].items() if match(k))

    lines = [
        "### Waste in the per-job command count",
        "",
        "From the trace above, per job: backlog (enqueue + drain) / trickle. Rows for "
        "commands that were not sent are left out.",
        "",
        "| command(s), where issued | single job | bulk job | could be |",
        "|---|---|---|---|",
    ]
    for match, where, fix in WASTE:
        cells = []
        for kind in KINDS:
            backlog, trickle = per_job(kind, match, SIDES), per_job(kind, match, ("trickle",))
            cells.append((backlog, trickle))
        if any(a or b for a, b in cells):
            shown = " | ".join(f"{_f(a)} / {_f(b)}" for a, b in cells)
            lines.append(f"| {where} | {shown} | {fix} |")
    record = [
        (kind, label, inside)
        for kind in KINDS
        for label, inside in r[kind]["trace"]["worker"]["inside"].items()
        if "_RECORD" in label and "expire" in inside
    ]
    if record:
        lines.append(
            "| `EXPIRE emailq:job:*` inside the ledger's record script repeats the 30-day "
            "EXPIRE its `_BEGIN` script set moments before (`worker/ledger.py`) | "
            + " | ".join(
                _f(
                    sum(
                        i["expire"] * r[k]["trace"]["worker"]["top"][lab]
                        for k, lab, i in record
                        if k == kind
                    )
                )  # fmt: skip
                for kind in KINDS
            )
            + " | drop it (inside a script: CPU only, no round trip) |"
        )
    lines += [
        "",
        "Not a command but bytes: the fetch script copies each message into `unacked` "
        "(kombu's visibility timeout restores from there), so a single job's payload "
        "crosses Redis three times (LPUSH in, HSET copy, reply out) and is replicated twice "
        "(the LPUSH and the HSET).",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: proves it runs")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--render", type=Path, help="print the section of saved results")
    args = parser.parse_args()
    if args.render:
        print(section(json.loads(args.render.read_text())))
        return
    from benchmarks.run import SIZES as RUN_SIZES
    from benchmarks.run import Bench
    from benchmarks.sink import Sink

    bench = Bench(RUN_SIZES["smoke" if args.smoke else "full"], 1)
    try:
        results = measure(bench, Sink, size="smoke" if args.smoke else "full")
    finally:
        bench.close()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    print(section(results))
    print(f"\n(measure() took {results['seconds']:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
