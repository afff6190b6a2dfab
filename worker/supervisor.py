"""``emailq worker``: the measured-fastest layout, one Celery worker process per core.

Each process runs Celery's thread pool (SMTP is I/O) and gets an equal share of the host's
``SMTP_MAX_CONNECTIONS``, so the host never opens more sessions than the provider allows.
The supervisor stays in the foreground, as a container's or systemd's main process should:

- every child has its own node name (``worker1@host``, ``worker2@host``...);
- SIGTERM or SIGINT is a warm shutdown of all: each child finishes the jobs it is sending,
  gives back the rest, and exits; a second signal makes it a cold one (SIGQUIT);
- a child that dies (killed, crashed) is started again, after a pause that doubles while
  it keeps dying young (1 s up to 30 s). Its unfinished jobs come back through the
  broker's visibility timeout and the per-job lock, as after any crash.

``celery multi`` daemonises and neither restarts children nor forwards signals, hence this.
"""

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

THREADS = 16  # per process: 2 × 16 measured fastest on 2 cores (benchmarks/RESULTS.md)
RESTART_MIN_S, RESTART_MAX_S = 1.0, 30.0
STABLE_S = 60.0  # a child that ran this long before dying restarts after the minimum pause
# Gossip makes every worker read every other worker's events (task events are on for
# Flower); mingle syncs revoked ids at start-up. Neither is used here, and gossip costs a
# busy host a share of its CPU.
QUIET = ("--without-gossip", "--without-mingle")


def _die_with_parent() -> None:
    """Linux: a child gets SIGTERM (a warm shutdown) if the supervisor itself is killed."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere a killed supervisor leaves its workers running, still correct


def default_processes() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class Child:
    index: int
    command: list[str]
    env: dict[str, str]
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    pause_s: float = RESTART_MIN_S
    restart_at: float | None = None
    restarts: int = field(default=0)

    def start(self) -> None:
        # A session of its own: a terminal's Ctrl-C reaches the supervisor alone, which sends
        # each child one SIGTERM (Celery reads a second signal as a cold shutdown).
        self.process = subprocess.Popen(
            self.command, env=self.env, start_new_session=True, preexec_fn=_die_with_parent
        )
        self.started_at = time.monotonic()
        self.restart_at = None
        log.info("worker %d started (pid %d)", self.index, self.process.pid)


class Supervisor:
    def __init__(
        self, *, processes: int, threads: int, connections: int, queues: str,
        loglevel: str, extra: list[str] | None = None,
    ) -> None:  # fmt: skip
        self.share = max(1, connections // processes)
        # Two glibc malloc arenas, not one per busy thread (up to 8 per core): with 16 threads
        # their free lists fragment apart and RSS creeps up (benchmarks/RESULTS.md, memory).
        # An operator's own MALLOC_ARENA_MAX wins.
        env = {"MALLOC_ARENA_MAX": "2", **os.environ, "SMTP_MAX_CONNECTIONS": str(self.share)}
        self.children = [
            Child(
                i,
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "emailq.worker",
                    "worker",
                    "-Q",
                    queues,
                    "-P",
                    "threads",
                    "-c",
                    str(threads),
                    "-n",
                    f"worker{i}@%h",
                    f"--loglevel={loglevel}",
                    *QUIET,
                    *(extra or []),
                ],
                env,
            )  # fmt: skip
            for i in range(1, processes + 1)
        ]
        self.stopping: int | None = None  # the signal a shutdown was asked with
        self.layout = (
            f"{processes} process(es) × {threads} threads, {self.share} SMTP connections each "
            f"({connections} per host), queues {queues}"
        )

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        log.info("emailq worker: %s", self.layout)
        for child in self.children:
            child.start()
        while True:
            alive = 0
            for child in self.children:
                alive += self._watch(child)
            if self.stopping is not None and alive == 0:
                log.info("emailq worker: every process has stopped")
                return 0
            time.sleep(0.2)

    def _watch(self, child: Child) -> int:
        """1 if ``child`` is running (or will be started again), 0 if it is gone for good."""
        now = time.monotonic()
        if child.process is not None and child.process.poll() is None:
            return 1
        if self.stopping is not None:
            return 0
        if child.restart_at is None:  # it just died
            code = child.process.returncode if child.process else None
            ran = now - child.started_at
            child.pause_s = (
                RESTART_MIN_S if ran >= STABLE_S else min(child.pause_s * 2, RESTART_MAX_S)
            )
            child.restart_at = now + child.pause_s
            log.error(
                "worker %d (pid %s) exited with %s after %.0f s; starting it again in %.0f s",
                child.index, child.process.pid if child.process else "-", code, ran,
                child.pause_s,
            )  # fmt: skip
        elif now >= child.restart_at:
            child.restarts += 1
            child.start()
        return 1

    def _stop(self, signum: int, _frame: object) -> None:
        cold = self.stopping is not None
        self.stopping = signum
        sent = signal.SIGQUIT if cold else signal.SIGTERM
        log.info(
            "emailq worker: %s shutdown of %d process(es)", "cold" if cold else "warm",
            len(self.children),
        )  # fmt: skip
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(sent)
