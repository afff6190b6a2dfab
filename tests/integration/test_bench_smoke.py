"""The benchmark harness runs end to end at tiny sizes. It asserts no timings."""

import subprocess
import sys

from tests.support.worker import ROOT


def test_make_bench_harness_runs_every_measurement_at_smoke_size(tmp_path):
    out = tmp_path / "RESULTS.md"

    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    text = out.read_text()
    figures = ("Drain rate", "end-to-end rate", "enqueue_bulk", "p99", "peak RSS", "Memory over",
               "CPU per message", "100 ms per reply", "1,000", "Postfix",
               "Redis capacity")  # fmt: skip
    for figure in figures:
        assert figure in text


def test_the_cpu_per_job_harness_compares_two_builds(tmp_path):
    # This build against itself: the harness runs, pairs its runs and prints a ratio
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.cpu_per_job", "--jobs", "260", "--pairs", "1",
         "--other-python", sys.executable],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "ratio to the other" in run.stdout
