"""The built wheel, installed into a fresh virtualenv, works inside someone else's application.

The wheel is built once per session from a copy of the checkout (``pip wheel`` builds in the
source tree, and the checkout must stay clean), its dependencies are collected in a local
wheelhouse, and it is installed with ``--no-index`` into a virtualenv that shares nothing with
the development one. Every process then runs the fresh virtualenv's ``python``, ``celery`` and
``emailq`` with only the variables an application would set, from a directory that holds the
application's own ``config``, ``core``, ``producer`` and ``worker`` modules: any of them
imported by emailq leaves a marker file and fails loudly.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.conftest import smtp_env
from tests.support import free_port
from tests.support.redis import RedisServer
from tests.support.smtp import SMTPTestServer
from tests.support.worker import ROOT

pytestmark = [
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is missing"),
    pytest.mark.timeout(300),
]

# What pip would never need to build the wheel; the rest of the checkout is copied as it is.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "var", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
    ".ruff_cache", ".env",
)  # fmt: skip
# The application's own modules, named like our folders: emailq must import none of them.
APP_MODULES = ("config", "core", "producer", "worker")
DECOY = '''\
"""The application's own {name} module, which emailq must never import."""
from pathlib import Path

Path(__file__).with_suffix(".imported").touch()
Settings = app = enqueue_email = None
raise RuntimeError("emailq imported the application's own {name}.py")
'''
PRODUCER = """\
import json
import sys

import emailq
from emailq import InvalidEmail, enqueue_email

try:
    enqueue_email(to="ann@example.com", subject="Direct", text="called, not queued")
except TypeError as exc:
    direct = str(exc)
else:
    direct = None
try:
    enqueue_email.delay(to="not an address", subject="Bad", text="never queued")
except InvalidEmail as exc:
    invalid = str(exc)
else:
    invalid = None
result = enqueue_email.delay(to="ann@example.com", subject="Welcome aboard", text="Hello, Ann")
print(json.dumps({
    "id": result.id, "direct": direct, "invalid": invalid,
    "invalid_is_value_error": issubclass(InvalidEmail, ValueError),
    "emailq_file": emailq.__file__,
    "app_modules": sorted(set(sys.modules) & {"config", "core", "producer", "worker"}),
}))
"""


@dataclass
class Installed:
    wheel: Path
    venv: Path
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self, **variables: str) -> dict[str, str]:
        """An application's environment: the fresh venv first on PATH, nothing else copied."""
        env = {name: os.environ[name] for name in ("HOME", "LANG") if name in os.environ}
        env["PATH"] = os.pathsep.join([str(self.bin), os.environ.get("PATH", os.defpath)])
        env.update(variables)
        return env


def _run(command: list[str | Path], cwd: Path, timeout: float = 300) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}{done.stderr}"


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """emailq's wheel, installed without an index into a fresh virtualenv."""
    base = tmp_path_factory.mktemp("install")
    source, dist, wheelhouse, venv = (base / d for d in ("src", "dist", "wheelhouse", "venv"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    timings: dict[str, float] = {}

    started = time.monotonic()
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    _run([*pip, "wheel", "--no-deps", "--quiet", ".", "-w", dist], cwd=source)
    [wheel] = dist.glob("emailq-*.whl")
    timings["wheel build"] = time.monotonic() - started

    started = time.monotonic()
    _run([*pip, "wheel", "--quiet", wheel, "-w", wheelhouse], cwd=base)
    timings["wheelhouse"] = time.monotonic() - started

    # The development venv's pip installs into the new one (--python): ensurepip and
    # byte-compiling every dependency would take four times as long as the install itself.
    started = time.monotonic()
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=base)
    _run(
        [*pip, "--python", venv / "bin" / "python", "install", "--quiet", "--no-compile",
         "--no-index", "--find-links", wheelhouse, "emailq"],
        cwd=base,
    )  # fmt: skip
    timings["venv install"] = time.monotonic() - started

    print("\ninstall timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    return Installed(wheel, venv, timings)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """An application's directory, with its own modules named like emailq's folders."""
    app = tmp_path / "app"
    app.mkdir()
    for name in APP_MODULES:
        (app / f"{name}.py").write_text(DECOY.format(name=name))
    return app


def _assert_no_app_module_imported(app: Path) -> None:
    assert not sorted(p.name for p in app.glob("*.imported")), "emailq imported the app's module"


class Background:
    """A long-running process in its own session, with its output in a log file."""

    def __init__(
        self, command: list[str | Path], *, cwd: Path, env: dict[str, str], log: Path
    ) -> None:
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.process.poll() is not None:
                raise AssertionError(f"exited {self.process.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {text!r} after {timeout}s:\n{self.output()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to the whole process group, then SIGKILL if it has not exited."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def background() -> Iterator[list[Background]]:
    """Processes a test starts; every one still running is stopped after it."""
    started: list[Background] = []
    yield started
    for process in started:
        process.stop()


def test_wheel_holds_only_the_emailq_package_and_its_metadata(installed: Installed) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names}
    [dist_info] = top_level - {"emailq"}
    assert top_level == {"emailq", dist_info}
    assert dist_info.startswith("emailq-") and dist_info.endswith(".dist-info")
    assert "emailq/core/templates/welcome.subject" in names


def test_installed_package_queues_delivers_and_reports_from_an_applications_directory(
    installed: Installed,
    app_dir: Path,
    tmp_path: Path,
    session_redis: RedisServer,
    smtp_server: SMTPTestServer,
    ca_file: Path,
    background: list[Background],
) -> None:
    started = time.monotonic()
    data_dir = tmp_path / "data"
    shared = {"REDIS_URL": session_redis.url, "EMAILQ_DATA_DIR": str(data_dir)}

    # Given an application that sets REDIS_URL and nothing else of ours
    # When it queues a job from its own directory
    producer = subprocess.run(
        [installed.bin / "python", "-c", PRODUCER], cwd=app_dir, env=installed.env(**shared),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert producer.returncode == 0, producer.stdout + producer.stderr
    queued = json.loads(producer.stdout.strip().splitlines()[-1])

    # Then the installed emailq was used, the application's own modules were not
    assert Path(queued["emailq_file"]).is_relative_to(installed.venv), queued["emailq_file"]
    assert queued["app_modules"] == []
    _assert_no_app_module_imported(app_dir)
    # And a direct call says to use .delay, and a bad address is an InvalidEmail (ValueError)
    assert queued["direct"] is not None and ".delay" in queued["direct"]
    assert queued["invalid"] is not None and queued["invalid_is_value_error"]

    # When a worker runs from the same directory with the SMTP settings
    worker_env = installed.env(**shared, **smtp_env(smtp_server, ca_file))
    worker = Background(
        [installed.bin / "celery", "-A", "emailq.worker", "worker", "-Q", "high,normal",
         "-P", "threads", "-c", "2", "-n", "install-test@%h", "--loglevel=INFO",
         "--without-gossip", "--without-mingle"],
        cwd=app_dir, env=worker_env, log=tmp_path / "worker.log",
    )  # fmt: skip
    background.append(worker)
    worker.wait_for(" ready.")

    # Then the queued mail is delivered
    try:
        [received] = smtp_server.handler.wait_for(1)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{worker.output()}") from None
    assert received.rcpt_tos == ["ann@example.com"]
    assert received.message["Subject"] == "Welcome aboard"
    _assert_no_app_module_imported(app_dir)

    # When an operator asks for the job's status from another directory
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    deadline = time.monotonic() + 15
    while True:
        status = subprocess.run(
            [installed.bin / "emailq", "status", queued["id"], "--json"], cwd=elsewhere,
            env=installed.env(**shared), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        try:
            job = json.loads(status.stdout) if status.returncode == 0 else {}
        except ValueError:  # anything but the JSON on stdout fails the assertion below
            job = {}
        if job.get("status") == "sent" or time.monotonic() > deadline:
            break
        time.sleep(0.5)

    # Then it reads the worker's tracking store in EMAILQ_DATA_DIR and reports it sent
    assert job.get("status") == "sent", status.stdout + status.stderr + worker.output()
    assert job["delivered_to"] == ["ann@example.com"]
    assert not list(elsewhere.iterdir()), "emailq status wrote to its working directory"
    worker.stop()
    assert worker.process.returncode == 0, worker.output()
    print(f"\ninstalled-package flow: {time.monotonic() - started:.1f}s")


def test_installed_flower_refuses_to_start_without_basic_auth(
    installed: Installed, app_dir: Path, tmp_path: Path, session_redis: RedisServer,
    background: list[Background],
) -> None:  # fmt: skip
    # Given an application's directory and no FLOWER_BASIC_AUTH
    env = installed.env(REDIS_URL=session_redis.url, EMAILQ_DATA_DIR=str(tmp_path / "data"))

    # When Flower is started from it
    flower = Background(
        [installed.bin / "celery", "-A", "emailq.worker", "flower", f"--port={free_port()}",
         "--address=127.0.0.1"],
        cwd=app_dir, env=env, log=tmp_path / "flower.log",
    )  # fmt: skip
    background.append(flower)
    try:
        flower.process.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"Flower still running after 30s without credentials:\n{flower.output()}")

    # Then it exits non-zero, naming the variable to set
    assert flower.process.returncode != 0, flower.output()
    assert "FLOWER_BASIC_AUTH" in flower.output()
    _assert_no_app_module_imported(app_dir)
