"""A private redis-server process on a free port."""

import shutil
import subprocess
import time
from pathlib import Path

import redis

from tests.support import free_port


class RedisServer:
    """``fsync`` (``always``/``everysec``) persists to an append-only file in ``directory``,
    so ``kill()`` then ``start()`` restarts it from its own data on the same port."""

    def __init__(
        self, directory: Path, *, port: int | None = None, fsync: str | None = None
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.fsync = fsync
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: run `make install` (apt redis-server)"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        aof = ["--appendonly", "yes", "--appendfsync", self.fsync] if self.fsync else [
            "--appendonly", "no"]  # fmt: skip
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *aof,
             "--dir", str(self.directory), "--logfile", "redis.log"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30  # loading a long append-only file takes a moment
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except (redis.ConnectionError, redis.BusyLoadingError):
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last write."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
