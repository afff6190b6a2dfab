"""Fixtures that start real servers: TLS material, aiosmtpd, celery workers."""

import os
import ssl
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import trustme

from tests.support import smtp
from tests.support.redis import RedisServer
from tests.support.smtp import SMTPTestServer
from tests.support.worker import WorkerProcess


@pytest.fixture(autouse=True)
def _empty_broker(session_redis: RedisServer) -> None:
    session_redis.client().flushall()


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def smtp_server(server_context: ssl.SSLContext) -> Iterator[SMTPTestServer]:
    """A server that requires STARTTLS and AUTH, with a certificate from the test CA."""
    with SMTPTestServer(server_context) as server:
        yield server


def smtp_env(server: SMTPTestServer, ca_file: Path | None, **extra: str) -> dict[str, str]:
    """The settings a worker needs to reach ``server``, as environment variables."""
    env = {
        "SMTP_SERVER": "127.0.0.1",
        "SMTP_PORT": str(server.port),
        "SMTP_SECURITY": "starttls",
        "EMAIL_ADDRESS": smtp.USER,
        "EMAIL_PASSWORD": smtp.PASSWORD,
        "EMAIL_FROM": f"Notifications <{smtp.USER}>",
    }
    if ca_file is not None:
        env["SMTP_CA_FILE"] = str(ca_file)
    env.update(extra)
    return env


@pytest.fixture
def start_worker(
    session_redis: RedisServer, ca_file: Path, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start celery workers against the session redis; all are stopped after the test."""
    started: list[WorkerProcess] = []

    def start(server: SMTPTestServer, *, concurrency: int = 2, queues: str = "high,normal",
              redis_url: str | None = None, pool: str = "threads",
              **extra: str) -> WorkerProcess:  # fmt: skip
        env = {**os.environ, "REDIS_URL": redis_url or session_redis.url}
        env.update(smtp_env(server, ca_file, **extra))
        log = tmp_path / f"worker-{len(started)}.log"
        worker = WorkerProcess(env, log, queues=queues, concurrency=concurrency, pool=pool)
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()


PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A fresh tracking store's URL: a SQLite file, or a database of its own on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tracking.sqlite3'}"
        return
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server reachable at 127.0.0.1:5432: {exc}")
    name = f"emailq_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.close()
