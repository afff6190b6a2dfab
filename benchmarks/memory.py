"""Worker memory over a long run: RSS per worker process against jobs done, and where it grows.

Two drains through `make worker`'s own command (``Bench.make_worker``: ``emailq worker``, a
Celery process per core under the supervisor), both against a 0 ms sink:

1. RSS: ``n`` jobs, no tracing. The queue is filled first with a mix, interleaved so the
   drain is the same mix from start to end: three jobs in four from ``enqueue_bulk`` (25
   jobs per task; ~7,000 recipients/s) and one in four from ``enqueue_email.delay``
   (~1,500/s; Celery's per-task state is exercised per job). The RSS of each worker
   process (the supervisor's children) is sampled every ``SAMPLE_S`` against the sink's
   count of messages. Reported per process: RSS after warm-up (the first sample at
   ``WARM`` of the jobs), at the end (the last sample before the last job), the peak, and
   the growth per 10,000 jobs (a least-squares slope over the samples after warm-up).
2. tracemalloc: ``trace_jobs`` jobs (default ``n // 20``, at most 10,000) with
   ``EMAILQ_TRACEMALLOC_DIR`` set (``emailq.worker.memtrace``): each worker process writes
   a snapshot when asked, at ``WARM``, half-way and at ``LAST`` of the jobs, all while busy.
   The growth between the first and the last, by file and line and by traceback, goes in
   the report.

The two are separate runs because tracemalloc slows a worker several-fold (about tenfold
at 16 frames on 2 shared cores) and takes memory of its own, a record per live allocation
and a burst per snapshot, which would blur the RSS figures.

``python -m benchmarks.memory [--jobs N] [--trace-jobs M] [--out FILE] [--json FILE]``.
"""

import argparse
import json
import os
import statistics
import sys
import sysconfig
import time
import tracemalloc
from pathlib import Path

import psutil

from benchmarks.run import ROOT, Bench

FULL_JOBS = 200_000
WARM = 0.10  # of the jobs done: the end of warm-up
LAST = 0.95  # of the jobs done: the last tracemalloc snapshot, taken while still busy
SAMPLE_S = 0.5
BULK_SHARE = 3  # of every 4 jobs, from enqueue_bulk; the fourth from delay()
ROUND = 4000  # jobs per fill round: BULK_SHARE / 4 of them bulk, the rest single
STALL_S = 180.0  # no job done for this long fails the run
TOP = 12  # lines in the tracemalloc tables
FRAMES = 8  # tracemalloc frames per allocation: enough to reach our code from most libraries
MIB = 2**20


def fill_mixed(bench: Bench, n: int) -> dict:
    """Fill ``n`` jobs in rounds of ``ROUND``: 3/4 through enqueue_bulk, 1/4 through delay()."""
    bulk = single = 0
    started = time.perf_counter()
    for index, first in enumerate(range(0, n, ROUND)):
        size = min(ROUND, n - first)
        many = size * BULK_SHARE // 4
        if many:
            bench.fill_bulk(many)
        bench.fill_single(size - many, prefix=f"single{index}-")
        bulk, single = bulk + many, single + size - many
    seconds = time.perf_counter() - started
    return {"bulk": bulk, "single": single, "seconds": seconds, "per_s": n / seconds}


def _workers(supervisor: psutil.Process) -> dict[int, tuple[str, psutil.Process]]:
    found = {}
    for child in supervisor.children(recursive=True):
        try:
            command = child.cmdline()
        except psutil.Error:
            continue
        # `-n worker1@%h`: the supervisor names each child
        node = command[command.index("-n") + 1] if "-n" in command[:-1] else str(child.pid)
        name = node.split("@")[0]
        found[child.pid] = (name, child)
    return found


def _drain(
    bench: Bench, sink, n: int, *, env: dict[str, str] | None = None, marks=None
) -> tuple[list[dict], dict[int, str], float, str]:
    """Start `make worker`'s command, sample RSS per worker process until the sink has ``n``.

    ``marks``: (fraction, callback) pairs; each callback is called once, with the worker
    processes' pids, as the jobs done pass its fraction.
    Returns the samples ({done, t, rss: {pid: bytes}}), pid -> process name, the drain's
    seconds (first message to last) and the worker processes' MALLOC_ARENA_MAX.
    """
    saved = bench.env
    bench.env = {**saved, **(env or {})}
    try:
        process = bench.make_worker()
    finally:
        bench.env = saved
    samples: list[dict] = []
    names: dict[int, str] = {}
    arenas: dict[int, str | None] = {}  # each worker process's MALLOC_ARENA_MAX
    pending = sorted(marks or [], key=lambda mark: mark[0])
    try:
        supervisor = psutil.Process(process.pid)
        started = time.monotonic()
        progress_at, last_done = started, -1
        while True:
            done = sink.count.value
            rss = {}
            for pid, (name, proc) in _workers(supervisor).items():
                try:
                    rss[pid] = proc.memory_info().rss
                    if pid not in names:
                        arenas[pid] = proc.environ().get("MALLOC_ARENA_MAX")
                    names[pid] = name
                except psutil.Error:
                    continue
            samples.append({"done": done, "t": time.monotonic() - started, "rss": rss})
            while pending and done >= pending[0][0] * n:
                pending.pop(0)[1](sorted(rss))
            if done >= n:
                break
            if done != last_done:
                progress_at, last_done = time.monotonic(), done
            elif time.monotonic() - progress_at > STALL_S:
                raise TimeoutError(f"no job done for {STALL_S:.0f} s: the sink has {done} of {n}")
            if process.poll() is not None:
                raise RuntimeError(f"`emailq worker` exited with {process.returncode}")
            time.sleep(SAMPLE_S)
    finally:
        bench.stop(process)
    arena_max = ", ".join(sorted({str(a) for a in arenas.values()}))
    return samples, names, sink.last.value - sink.first.value, arena_max


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    if len(points) < 2:
        return 0.0
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


def rss_figures(samples: list[dict], names: dict[int, str], n: int) -> list[dict]:
    """Per worker process: RSS at warm-up, at the end, peak, growth and growth per 10k jobs."""
    rows = []
    for pid in sorted(names, key=lambda p: (names[p], p)):
        own = [(s["done"], s["rss"][pid]) for s in samples if pid in s["rss"]]
        busy = [(d, r) for d, r in own if d < n] or own
        after = [(d, r) for d, r in busy if d >= WARM * n]
        if not after:
            continue
        warm, end = after[0], after[-1]
        rows.append({
            "pid": pid, "name": names[pid],
            "start_mib": next((r for d, r in own if d > 0), own[0][1]) / MIB,
            "warm_mib": warm[1] / MIB, "warm_done": warm[0],
            "end_mib": end[1] / MIB, "end_done": end[0],
            "peak_mib": max(r for _, r in own) / MIB,
            "growth_mib": (end[1] - warm[1]) / MIB,
            "per_10k_mib": _slope([(d, r / MIB) for d, r in after]) * 10_000,
        })  # fmt: skip
    return rows


def _curve(samples: list[dict], names: dict[int, str], n: int, points: int = 10) -> list[dict]:
    """RSS per process at every 1/``points`` of the jobs (the first sample past each)."""
    curve = []
    for step in range(1, points + 1):
        target = n * step / points
        sample = next((s for s in samples if s["done"] >= target and s["rss"]), None)
        if sample is None:
            continue
        if step == points:  # the last sample still busy, for the final row
            busy = [s for s in samples if s["done"] < n and s["rss"]]
            sample = busy[-1] if busy else sample
        rss = {names.get(pid, str(pid)): v / MIB for pid, v in sample["rss"].items()}
        curve.append({"done": sample["done"], "rss_mib": rss})
    return curve


# -- tracemalloc -------------------------------------------------------------------------
_PREFIXES = sorted(
    {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["stdlib"], str(ROOT)},
    key=len,
    reverse=True,
)


def _short(filename: str) -> str:
    for prefix in _PREFIXES:
        if filename.startswith(prefix + os.sep):
            return filename[len(prefix) + 1 :]
    return filename


def _load(path: Path) -> tracemalloc.Snapshot:
    return tracemalloc.Snapshot.load(str(path)).filter_traces(
        [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
            tracemalloc.Filter(False, "<unknown>"),
        ]
    )


def _wait_for(paths: list[Path], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.with_suffix(".json").exists() for p in paths):
        if time.monotonic() > deadline:
            missing = [p.name for p in paths if not p.with_suffix(".json").exists()]
            raise TimeoutError(f"tracemalloc snapshots not written: {missing}")
        time.sleep(0.2)


def trace_growth(directory: Path, pids: list[int], first: str, last: str) -> dict:
    """The growth between two labelled snapshots of each process, summed over processes."""
    by_line: dict[str, list[int]] = {}
    by_trace: dict[tuple, list[int]] = {}
    processes = []
    for pid in pids:
        meta = {
            label: json.loads((directory / f"{pid}-{label}.json").read_text())
            for label in (first, last)
        }
        old, new = (
            _load(directory / f"{pid}-{first}.tracemalloc"),
            _load(directory / f"{pid}-{last}.tracemalloc"),
        )
        for stat in new.compare_to(old, "lineno"):
            frame = stat.traceback[0]
            entry = by_line.setdefault(f"{_short(frame.filename)}:{frame.lineno}", [0, 0])
            entry[0] += stat.size_diff
            entry[1] += stat.count_diff
        for stat in new.compare_to(old, "traceback"):
            frames = tuple(f"{_short(f.filename)}:{f.lineno}" for f in stat.traceback)
            entry = by_trace.setdefault(frames, [0, 0])
            entry[0] += stat.size_diff
            entry[1] += stat.count_diff
        processes.append({
            "pid": pid,
            "traced_first_mib": meta[first]["traced"] / MIB,
            "traced_last_mib": meta[last]["traced"] / MIB,
            "rss_first_mib": meta[first]["rss"] / MIB,
            "rss_last_mib": meta[last]["rss"] / MIB,
            "snapshot_s": max(m["took_s"] for m in meta.values()),
            "kinds_mib": {
                kind: (meta[first].get("rss_by_kind", {}).get(kind, 0) / MIB,
                       meta[last].get("rss_by_kind", {}).get(kind, 0) / MIB)
                for kind in ("heap", "anon", "file")
            },
            "malloc_mib": {
                key: (meta[first].get("malloc", {}).get(key, 0) / MIB,
                      meta[last].get("malloc", {}).get(key, 0) / MIB)
                for key in ("uordblks", "fordblks")
            },
        })  # fmt: skip
    lines = sorted(by_line.items(), key=lambda item: -item[1][0])[:TOP]
    traces = sorted(by_trace.items(), key=lambda item: -item[1][0])[:5]
    return {
        "processes": processes,
        "lines": [{"where": k, "size_kib": v[0] / 1024, "count": v[1]} for k, v in lines],
        "traces": [{"frames": list(k), "size_kib": v[0] / 1024, "count": v[1]} for k, v in traces],
        "traced_growth_mib": sum(v[0] for v in by_line.values()) / MIB,
    }


def measure(bench: Bench, sink_cls, n: int, *, trace_jobs: int | None = None) -> dict:
    """Both runs (see the module's docstring); starts and stops its own 0 ms sink."""
    trace_jobs = trace_jobs if trace_jobs is not None else min(max(n // 20, 200), 10_000)
    began = time.monotonic()
    results: dict = {"jobs": n, "trace_jobs": trace_jobs, "warm": WARM, "last": LAST}
    sink = sink_cls(bench.sink_port, 0)
    try:
        bench.redis.flushall()
        results["fill"] = fill_mixed(bench, n)
        sink.reset()
        samples, names, seconds, results["malloc_arena_max"] = _drain(bench, sink, n)
        results["rss"] = {
            "drain_s": seconds,
            "per_s": (n - 1) / seconds if seconds > 0 else float("nan"),
            "processes": rss_figures(samples, names, n),
            "curve": _curve(samples, names, n),
        }
        if trace_jobs:
            results["tracemalloc"] = _trace_run(bench, sink, trace_jobs)
    finally:
        sink.stop()
    results["seconds"] = time.monotonic() - began
    return results


def _trace_run(bench: Bench, sink, n: int) -> dict:
    directory = bench.workdir / "tracemalloc"
    directory.mkdir(exist_ok=True)
    for old in directory.iterdir():
        old.unlink()
    bench.redis.flushall()
    fill_mixed(bench, n)
    sink.reset()
    labels = [("warm", WARM), ("mid", (WARM + LAST) / 2), ("last", LAST)]
    done_at: dict[str, int] = {}
    pids: list[int] = []

    def mark(label: str):
        def ask(running: list[int]) -> None:
            if not pids:  # the worker processes as first asked; every later request goes to them
                pids.extend(running)
            (directory / "request.tmp").write_text(label)
            os.replace(directory / "request.tmp", directory / "request")  # never read half-written
            done_at[label] = sink.count.value
            _wait_for([directory / f"{pid}-{label}.tracemalloc" for pid in pids])

        return ask

    env = {"EMAILQ_TRACEMALLOC_DIR": str(directory), "EMAILQ_TRACEMALLOC_FRAMES": str(FRAMES),
           "EMAILQ_TRACEMALLOC_INTERVAL_S": "0"}  # fmt: skip
    samples, names, seconds, _ = _drain(
        bench, sink, n, env=env, marks=[(f, mark(label)) for label, f in labels]
    )
    growth = trace_growth(directory, pids, "warm", "last")
    mid = trace_growth(directory, pids, "warm", "mid")
    for process in growth["processes"]:
        process["name"] = names.get(process["pid"], str(process["pid"]))
    return {
        "drain_s": seconds,
        "per_s": (n - 1) / seconds if seconds > 0 else float("nan"),
        "frames": FRAMES,
        "done_at": done_at,
        "rss": rss_figures(samples, names, n),
        "growth": growth,
        "growth_to_mid_mib": mid["traced_growth_mib"],
    }


# -- report ------------------------------------------------------------------------------
def section(results: dict) -> str:
    """Markdown for benchmarks/RESULTS.md."""
    n, r = results["jobs"], results["rss"]
    fill = results["fill"]
    procs = r["processes"]
    total_growth = sum(p["growth_mib"] for p in procs)
    lines = [
        f"## Memory over {n:,} jobs",
        "",
        f"`make worker`'s command (`emailq worker -Q high,normal --loglevel=INFO`: "
        f"{len(procs)} Celery process(es) × 16 threads) against a 0 ms sink. The queue was "
        f"filled first, in rounds of {ROUND:,}: {fill['bulk']:,} jobs from `enqueue_bulk` and "
        f"{fill['single']:,} from `enqueue_email.delay`, interleaved "
        f"({fill['per_s']:,.0f} jobs/s). Drained in {r['drain_s']:.0f} s "
        f"({r['per_s']:.0f} msg/s). RSS of each worker process sampled every {SAMPLE_S} s; "
        f"warm-up ends at {WARM:.0%} of the jobs; \"end\" is the last sample before the last "
        "job; growth per 10k jobs is the least-squares slope after warm-up."
        + f" The worker processes ran with `MALLOC_ARENA_MAX={results['malloc_arena_max']}`"
        " (`None`: glibc's default, 8 arenas per core).",
        "",
        "| process | RSS, first job | after warm-up | at the end | peak | growth | per 10k jobs |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for p in procs:
        lines.append(
            f"| {p['name']} (pid {p['pid']}) | {p['start_mib']:.1f} MiB | "
            f"{p['warm_mib']:.1f} MiB ({p['warm_done']:,} jobs) | "
            f"{p['end_mib']:.1f} MiB ({p['end_done']:,} jobs) | {p['peak_mib']:.1f} MiB | "
            f"{p['growth_mib']:+.1f} MiB | {p['per_10k_mib']:+.2f} MiB |"
        )
    met = all(p["growth_mib"] < 5 for p in procs)
    lines += [
        "",
        f"Target, RSS grows by less than 5 MiB after warm-up (each process): "
        f"**{'met' if met else 'not met'}** (+{total_growth:.1f} MiB over all processes).",
        "",
        "RSS (MiB) through the run:",
        "",
        "| jobs done | " + " | ".join(p["name"] for p in procs) + " |",
        "|---|" + "---|" * len(procs),
    ]
    for point in r["curve"]:
        values = " | ".join(f"{point['rss_mib'].get(p['name'], float('nan')):.1f}" for p in procs)
        lines.append(f"| {point['done']:,} | {values} |")
    trace = results.get("tracemalloc")
    if trace:
        lines += _trace_section(trace, results["trace_jobs"])
    lines += ["", f"`measure()` took {results['seconds'] / 60:.1f} min in all.", ""]
    return "\n".join(lines)


def _trace_section(trace: dict, jobs: int) -> list[str]:
    g = trace["growth"]
    done = trace["done_at"]
    lines = [
        "",
        f"### tracemalloc, {jobs:,} jobs",
        "",
        f"A second run of the same mix with `EMAILQ_TRACEMALLOC_DIR` set "
        f"(`emailq.worker.memtrace`, {trace['frames']} frames): {trace['per_s']:.0f} msg/s "
        "under tracing. Each worker process wrote a snapshot on request at "
        f"{done.get('warm', 0):,}, {done.get('mid', 0):,} and {done.get('last', 0):,} jobs, "
        "all while busy. Growth from the first to the last, all processes together: "
        f"{g['traced_growth_mib'] * 1024:+.0f} KiB traced "
        f"({trace['growth_to_mid_mib'] * 1024:+.0f} KiB by the middle one).",
        "",
        "Per process, first → last snapshot (MiB): RSS, and its split by mapping (the brk heap,"
        " other anonymous memory, files); glibc malloc's bytes in use and free but kept "
        "(`mallinfo2`); what tracemalloc traces. RSS here includes tracemalloc's own records and"
        " what each snapshot allocates and frees (kept by malloc as free memory): the RSS run "
        "above is the one to judge RSS by; this one says what Python objects accumulate.",
        "",
        "| process | RSS | heap | anon | file | malloc in use | malloc free | traced |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in g["processes"]:
        pair = lambda a, b: f"{a:.1f} → {b:.1f}"  # noqa: E731
        kinds, malloc = p.get("kinds_mib", {}), p.get("malloc_mib", {})
        cells = [pair(*kinds.get(k, (0, 0))) for k in ("heap", "anon", "file")]
        cells += [pair(*malloc.get(k, (0, 0))) for k in ("uordblks", "fordblks")]
        lines.append(
            f"| {p['name']} | {pair(p['rss_first_mib'], p['rss_last_mib'])} | "
            + " | ".join(cells)
            + f" | {pair(p['traced_first_mib'], p['traced_last_mib'])} |"
        )
    lines += [
        "",
        "Top growth by line (`compare_to(..., 'lineno')`, summed over processes):",
        "",
        "| file:line | size | blocks |",
        "|---|---|---|",
    ]
    lines += [
        f"| `{e['where']}` | {e['size_kib']:+.1f} KiB | {e['count']:+,} |" for e in g["lines"]
    ]
    lines += ["", "Top growth by traceback (`'traceback'`, innermost frame last):", ""]
    for e in g["traces"]:
        lines.append(f"- {e['size_kib']:+.1f} KiB, {e['count']:+,} blocks:")
        lines += [f"  - `{frame}`" for frame in e["frames"]]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=FULL_JOBS)
    parser.add_argument(
        "--trace-jobs",
        type=int,
        default=None,
        help="jobs of the tracemalloc run (default: a quarter; 0: none)",
    )
    parser.add_argument("--out", type=Path, help="write the markdown section here too")
    parser.add_argument("--json", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    from benchmarks.sink import Sink

    bench = Bench({}, 1)
    try:
        results = measure(bench, Sink, args.jobs, trace_jobs=args.trace_jobs)
    finally:
        bench.close()
    text = section(results)
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
