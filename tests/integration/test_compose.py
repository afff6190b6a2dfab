"""docker-compose.yml as `docker-compose config` resolves it: valid, complete, health-checked.

Run in a project directory of the test's own, so its `.env` is the one the test wrote and
never a developer's.
"""

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.worker import ROOT

APP_SERVICES = {"worker-high", "worker", "beat", "flower", "sink"}  # those running our image
# Settings that nothing under `environment:` names: they reach a container through .env only.
DOT_ENV = """\
REDIS_URL=redis://localhost:6379/0
EMAILQ_DATA_DIR=/srv/emailq
SMTP_RATE_LIMIT=10/second;500/day
MAX_RETRIES=7
TRACKING_RETENTION_DAYS=45
ALERT_TO=ops@example.org
TEMPLATES_DIR=/templates
EMAILQ_SECRET_KEY=not-a-real-key
"""


@pytest.fixture(scope="module")
def docker_compose() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        pytest.fail("docker-compose is not installed: run `make install` (scripts/system-deps.sh)")
    return path


def compose_config(
    docker_compose: str, project: Path, dot_env: str, *extra: str, **variables: str
) -> subprocess.CompletedProcess:
    (project / ".env").write_text(dot_env, encoding="utf-8")
    env = {"PATH": os.environ["PATH"], "HOME": str(project), **variables}
    command = [docker_compose, "-f", str(ROOT / "docker-compose.yml"),
               "--project-directory", str(project), "config", *extra]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def services(docker_compose, tmp_path) -> dict[str, dict]:
    resolved = compose_config(docker_compose, tmp_path, DOT_ENV, FLOWER_BASIC_AUTH="admin:pw")
    assert resolved.returncode == 0, resolved.stderr
    return yaml.safe_load(resolved.stdout)["services"]


def command_of(service: dict) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else list(command)


def health_command(service: dict) -> str:
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return test
    kind, *args = test
    assert kind in ("CMD", "CMD-SHELL"), test
    return " ".join(args).replace("$$", "$")


def test_docker_compose_file_is_valid_and_flower_needs_credentials(docker_compose, tmp_path):
    # Given a user's first .env: a copy of .env.example
    example = (ROOT / ".env.example").read_text(encoding="utf-8")

    check = compose_config(docker_compose, tmp_path, example, "-q", FLOWER_BASIC_AUTH="admin:pw")
    assert check.returncode == 0, check.stderr

    refused = compose_config(docker_compose, tmp_path, example, "-q")
    assert refused.returncode != 0 and "FLOWER_BASIC_AUTH" in refused.stderr


def test_every_service_running_our_image_gets_every_setting_from_dot_env(services):
    assert set(services) >= APP_SERVICES
    for name in APP_SERVICES:
        env = services[name]["environment"]
        # Settings from .env arrive...
        assert env["SMTP_RATE_LIMIT"] == "10/second;500/day", name
        assert env["MAX_RETRIES"] == "7" and env["TRACKING_RETENTION_DAYS"] == "45", name
        assert env["ALERT_TO"] == "ops@example.org" and env["TEMPLATES_DIR"] == "/templates"
        assert env["EMAILQ_SECRET_KEY"] == "not-a-real-key", name
        # ...except where the containers must look inside compose's network
        assert env["REDIS_URL"] == "redis://redis:6379/0", name
        assert env["EMAILQ_DATABASE_URL"].endswith("@postgres:5432/emailq"), name
        assert env["EMAILQ_DATA_DIR"] == "/home/emailq/data", name
        assert env["SMTP_SERVER"] == "sink", name
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"] == "admin:pw"


def test_the_worker_service_runs_the_supervisor_under_an_init(services):
    assert command_of(services["worker"])[:2] == ["emailq", "worker"]
    assert services["worker"].get("init") is True


def test_compose_runs_exactly_one_beat(services):
    beats = [name for name, s in services.items() if command_of(s)[3:4] == ["beat"]]
    assert beats == ["beat"]
    assert command_of(services["beat"])[:4] == ["celery", "-A", "emailq.worker", "beat"]
    for name, service in services.items():  # no worker runs an embedded beat either
        assert not {"-B", "--beat"} & set(command_of(service)), name
    assert "scale" not in services["beat"]
    assert services["beat"].get("deploy", {}).get("replicas", 1) == 1


def test_every_service_has_a_health_check_and_celery_ones_ping_their_own_node(services):
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    # A worker or beat is healthy when its own node answers `celery inspect ping`
    for name in ("worker-high", "worker", "beat"):
        command = command_of(services[name])
        # `emailq worker` names its processes worker1@%h, worker2@%h...
        node = (
            "worker1@%h"
            if command[:2] == ["emailq", "worker"]
            else command[command.index("-n") + 1]
        )
        assert node.endswith("@%h"), name
        check = health_command(services[name])
        assert "inspect ping" in check, name
        assert f"-d {node.removesuffix('%h')}$HOSTNAME" in check, name
    assert "--enable-remote-control" in command_of(services["beat"])
    # Flower's check logs in: the image has Python, not curl
    flower = health_command(services["flower"])
    assert "FLOWER_BASIC_AUTH" in flower and "Authorization" in flower and "python" in flower
