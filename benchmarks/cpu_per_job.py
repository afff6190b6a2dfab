"""Worker CPU per single job, this build against another one, runs interleaved.

    .venv/bin/python -m benchmarks.cpu_per_job [--jobs 3000] [--pairs 5]
        [--other-python /path/to/other/.venv/bin/python] [--py-spy out.txt]

Each run: a private Redis and a 0 ms SMTP sink, ``--jobs`` single jobs queued with
``enqueue_email.delay``, then one ``celery -A emailq.worker worker`` process of 16
threads (the layout ``emailq worker`` runs per core). The worker's user and system CPU
time (psutil) is read from the 200th message the sink takes to the last, and divided by
the messages in between. With ``--other-python`` (the interpreter of another checkout's
virtualenv, e.g. an older commit installed with ``pip install -e .``), the other build
runs before each run of this one, started outside this checkout, and the ratio of each
pair is printed: the machine's shared cores drift by tens of percent between minutes,
so only pairs taken back to back compare. ``--py-spy`` records a ``--gil`` profile of
this build's first run in py-spy's raw format (``pip install py-spy``).
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

import psutil

from benchmarks.run import PY, Bench
from benchmarks.sink import Sink

WARM_UP = 200  # messages before the CPU clock starts: imports, connections, first compiles


def run(
    bench: Bench, sink: Sink, python: str, jobs: int, profile: str | None
) -> tuple[float, float]:
    """(user, system) ms of worker CPU per message for one run of ``python``'s build."""
    bench.redis.flushall()
    bench.fill_single(jobs)
    sink.reset()
    log = (bench.workdir / "worker.log").open("ab")
    worker = subprocess.Popen(
        [python, "-m", "celery", "-A", "emailq.worker", "worker", "-Q", "high,normal", "-c", "16",
         "--loglevel=WARNING", "--without-gossip", "--without-mingle"],
        cwd=bench.workdir, env=bench.env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    spy = None
    try:
        sink.wait_for(WARM_UP, timeout=120)
        process = psutil.Process(worker.pid)
        done, before = sink.count.value, process.cpu_times()
        if profile:
            spy = subprocess.Popen(
                ["py-spy", "record", "--gil", "--nonblocking", "-r", "200", "-f", "raw",
                 "-o", profile, "-p", str(worker.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        sink.wait_for(jobs, timeout=max(120, jobs / 5))
        after = process.cpu_times()
        n = max(1, sink.count.value - done)
        return 1000 * (after.user - before.user) / n, 1000 * (after.system - before.system) / n
    finally:
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        bench.stop(worker)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument(
        "--other-python", help="another build's interpreter, run first in each pair"
    )
    parser.add_argument("--py-spy", dest="profile", help="write a --gil profile of one run here")
    args = parser.parse_args()
    bench = Bench({}, 1)
    sink = Sink(bench.sink_port, 0)
    ratios, ours = [], []
    try:
        for i in range(args.pairs):
            other = None
            if args.other_python:
                other = sum(run(bench, sink, args.other_python, args.jobs, None))
            user, system = run(bench, sink, PY, args.jobs, args.profile if i == 0 else None)
            ours.append(user + system)
            line = f"pair {i + 1}: this build {user + system:.2f} ms"
            line += f" ({user:.2f} user, {system:.2f} sys)"
            if other is not None:
                ratios.append(ours[-1] / other)
                line += f", other {other:.2f} ms, ratio {ratios[-1]:.2f}"
            print(line, flush=True)
            time.sleep(1)
    finally:
        sink.stop()
        bench.close()
    summary = f"median: this build {statistics.median(ours):.2f} ms per job"
    if ratios:
        summary += f", ratio to the other {statistics.median(ratios):.2f} (of {len(ratios)} pairs)"
    print(summary)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
