"""A worker with a bad configuration stops at start-up, naming the variable."""

import pytest


def test_worker_refuses_to_start_with_a_malformed_port(smtp_server, start_worker):
    with pytest.raises(RuntimeError) as failed:
        start_worker(smtp_server, SMTP_PORT="not-a-port")
    assert "SMTP_PORT" in str(failed.value)


def test_worker_refuses_to_start_without_a_from_address(smtp_server, start_worker):
    with pytest.raises(RuntimeError) as failed:
        start_worker(smtp_server, EMAIL_FROM="", EMAIL_ADDRESS="", EMAIL_PASSWORD="")
    assert "EMAIL_FROM or EMAIL_ADDRESS must be set" in str(failed.value)


def test_worker_refuses_to_start_with_a_password_in_clear_text(smtp_server, start_worker):
    with pytest.raises(RuntimeError) as failed:
        start_worker(smtp_server, SMTP_SERVER="mail.example.com", SMTP_SECURITY="none")
    message = str(failed.value)
    assert "EMAIL_PASSWORD" in message and "clear text" in message
    assert "s3cret" not in message  # the password itself is never printed
