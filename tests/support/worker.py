"""A real ``celery -A emailq.worker worker`` process, started and stopped by the test."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    def __init__(
        self,
        env: dict[str, str],
        logfile: Path,
        *,
        queues: str = "high,normal",
        concurrency: int = 2,
        pool: str = "threads",
    ) -> None:
        self.env = env
        self.logfile = logfile
        self.name = f"test-{uuid.uuid4().hex[:8]}@%h"
        self.command = [
            sys.executable, "-m", "celery", "-A", "emailq.worker", "worker",
            "-Q", queues, "-c", str(concurrency), "-P", pool, "-n", self.name,
            "--loglevel=INFO", "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "WorkerProcess":
        out = self.logfile.open("ab")
        self.process = subprocess.Popen(
            # Any directory but the checkout: nothing may depend on the working directory.
            self.command, env=self.env, cwd=self.logfile.parent, stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log():
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"worker not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown (SIGTERM): finish the running jobs, then exit."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the whole worker: no shutdown, no acknowledgements."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
