"""`emailq check` against real Redis, SMTP (STARTTLS, AUTH) and the tracking database."""

import os
import subprocess
import sys
from pathlib import Path

from kombu import Connection

from emailq.core import backends
from emailq.worker.marker import plant
from tests.integration.conftest import smtp_env
from tests.support import free_port, smtp

EMAILQ = str(Path(sys.executable).with_name("emailq"))


def check(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [EMAILQ, "check"], env={**os.environ, "COLUMNS": "200", **env},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_every_piece_passes_when_everything_is_reachable(smtp_server, ca_file, session_redis):
    plant(session_redis.client())  # as the first worker to start does
    out = check(**smtp_env(smtp_server, ca_file))

    assert out.returncode == 0, out.stdout + out.stderr
    pieces = ("configuration", "redis", "queue quarantine", "smtp", "smtp circuit")
    for piece in (*pieces, "tracking database"):
        assert f"✓ {piece}" in out.stdout
    assert "STARTTLS, certificate verified, logged in as sender@example.com" in out.stdout


def test_malformed_queue_items_moved_aside_are_reported_not_failed(
    smtp_server, ca_file, session_redis
):
    # Given two malformed items a worker moved out of `normal` (emailq.core.fetch)
    redis = session_redis.client()
    plant(redis)
    redis.lpush("normal", b"garbage", b"[1, 2]")
    with Connection(session_redis.url, transport=backends.Transport) as conn:
        channel = conn.channel()
        assert channel.basic_get("normal") is None

    # When the operator runs `emailq check`
    out = check(**smtp_env(smtp_server, ca_file))

    # Then the quarantine is a notice naming the count, the newest error and the commands
    assert out.returncode == 0, out.stdout + out.stderr
    text = " ".join(out.stdout.split())  # rich wraps long lines
    assert "! queue quarantine: 2 malformed queue item(s) moved aside" in text, text
    assert "from normal: not a message envelope" in text
    assert "see LRANGE emailq:quarantine" in text


def test_a_wrong_password_fails_the_smtp_check_and_names_the_setting(smtp_server, ca_file):
    out = check(**smtp_env(smtp_server, ca_file, EMAIL_PASSWORD="wrong"))

    assert out.returncode == 1
    assert "✗ smtp" in out.stdout and "535" in out.stdout and "EMAIL_PASSWORD" in out.stdout
    assert "wrong" not in out.stdout  # the password itself is never printed
    assert smtp.PASSWORD not in out.stdout


def test_an_unverified_certificate_and_a_dead_redis_fail_with_their_reasons(smtp_server):
    out = check(**smtp_env(smtp_server, None), REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")

    assert out.returncode == 1
    assert "✗ redis" in out.stdout
    assert "✗ smtp" in out.stdout and "SMTP_CA_FILE" in out.stdout
    assert "✓ tracking database" in out.stdout


def test_a_bad_setting_fails_the_configuration_check(smtp_server, ca_file):
    out = check(**smtp_env(smtp_server, ca_file, SMTP_PORT="seventy"))

    assert out.returncode == 1 and "✗ configuration" in out.stdout and "SMTP_PORT" in out.stdout


def test_check_names_the_tracking_database_it_reads_and_where_that_came_from(
    smtp_server, ca_file, tmp_path
):
    env = {**smtp_env(smtp_server, ca_file), "EMAILQ_DATA_DIR": str(tmp_path / "data")}
    default = check(**env, DATABASE_URL="", EMAILQ_DATABASE_URL="")
    explicit = check(**env, EMAILQ_DATABASE_URL=f"sqlite:///{tmp_path / 'own.db'}")

    assert f"{tmp_path / 'data' / 'emailq.sqlite3'} (from EMAILQ_DATA_DIR)" in default.stdout
    assert f"{tmp_path / 'own.db'} (from EMAILQ_DATABASE_URL or DATABASE_URL)" in explicit.stdout
