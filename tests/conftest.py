"""Test session set-up: a private redis-server for the producer, and no developer `.env`."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.support.redis import RedisServer

_session_redis: RedisServer | None = None


def pytest_configure(config: pytest.Config) -> None:
    # Settings are read once per process; set the environment before anything imports them.
    global _session_redis
    os.environ["EMAILQ_ENV_FILE"] = os.devnull
    os.environ["EMAILQ_DATA_DIR"] = tempfile.mkdtemp(prefix="emailq-data-")
    tracking = Path(tempfile.mkdtemp(prefix="emailq-tracking-")) / "tracking.sqlite3"
    os.environ["DATABASE_URL"] = f"sqlite:///{tracking}"
    os.environ["SECRET_KEY"] = "test-secret-key-for-verification-links"
    if shutil.which("redis-server"):
        _session_redis = RedisServer(Path(tempfile.mkdtemp(prefix="emailq-redis-"))).start()
        os.environ["REDIS_URL"] = _session_redis.url


def pytest_unconfigure(config: pytest.Config) -> None:
    if _session_redis is not None:
        _session_redis.stop()
        shutil.rmtree(_session_redis.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def session_redis() -> RedisServer:
    if _session_redis is None:
        pytest.fail("redis-server is not installed: run `make install`")
    return _session_redis
