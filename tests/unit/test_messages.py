"""Every message an operator reads names its cause and its fix (issue 12, item 3)."""

import os
import smtplib
import socket
import ssl
from types import SimpleNamespace

import pytest

from emailq.config import load_settings
from emailq.core.errors import (
    ConnectFailed,
    InvalidEmail,
    JobExpired,
    PermanentError,
    TLSVerificationError,
    TransientError,
)
from emailq.core.validation import validate_job
from emailq.worker.classify import classify
from emailq.worker.cli.check import Notice, _preset, _reason, _smtp
from emailq.worker.outcome import judge_error, judge_result
from emailq.worker.sender import SendResult, SMTPSender
from tests.support import free_port

PASSWORD = "hunter2-Zq9!secret"


def smtp_settings(**overrides):
    values = {
        "smtp_server": "smtp.example.com", "smtp_port": 587, "smtp_provider": None,
        "smtp_security": None, "email_address": "me@example.com", "email_password": PASSWORD,
        **overrides,
    }  # fmt: skip
    return load_settings(_env_file=os.devnull, **values)


def failing_constructor(exc: BaseException):
    def construct(*args, **kwargs):
        raise exc

    return construct


# (a) a relay that cannot be reached is named: host, port and SMTP_SECURITY


def test_a_refused_connection_names_the_host_port_and_security_mode():
    settings = smtp_settings(smtp_server="127.0.0.1", smtp_port=free_port())

    with pytest.raises(ConnectFailed) as excinfo:
        SMTPSender(settings).connect()

    message = str(excinfo.value)
    assert message.startswith(
        f"cannot connect to 127.0.0.1:{settings.smtp_port} (starttls): connection refused"
    ), message
    assert "SMTP_SERVER and SMTP_PORT" in message
    assert PASSWORD not in message


@pytest.mark.parametrize(
    ("exc", "security", "cause"),
    [
        (socket.gaierror(-2, "Name or service not known"), "starttls",
         "the name does not resolve (Name or service not known); check SMTP_SERVER"),
        (TimeoutError("timed out"), "starttls", "timed out (no reply within SMTP_TIMEOUT_S)"),
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "ssl",
         "TLS handshake failed"),
        (smtplib.SMTPServerDisconnected("Connection unexpectedly closed"), "starttls",
         "the server closed the connection (Connection unexpectedly closed)"),
    ],
    ids=["dns", "timeout", "tls-handshake", "hung-up"],
)  # fmt: skip
def test_every_kind_of_connection_failure_names_the_relay_and_its_cause(
    monkeypatch, exc, security, cause
):
    monkeypatch.setattr(smtplib, "SMTP", failing_constructor(exc))
    monkeypatch.setattr(smtplib, "SMTP_SSL", failing_constructor(exc))
    settings = smtp_settings(smtp_security=security)

    with pytest.raises(ConnectFailed) as excinfo:
        SMTPSender(settings).connect()

    error = excinfo.value
    assert str(error).startswith(f"cannot connect to smtp.example.com:587 ({security}): {cause}")
    assert isinstance(error, TransientError) and isinstance(error, ConnectionError)
    assert classify(error) is error  # the worker's retry decision sees the same error


def test_a_certificate_that_does_not_verify_names_the_relay_and_smtp_ca_file(monkeypatch):
    unverified = ssl.SSLCertVerificationError(1, "certificate verify failed")
    unverified.verify_message = "self-signed certificate"
    monkeypatch.setattr(smtplib, "SMTP", failing_constructor(unverified))

    with pytest.raises(TLSVerificationError) as excinfo:
        SMTPSender(smtp_settings()).connect()

    assert str(excinfo.value) == (
        "certificate of smtp.example.com:587 (starttls) did not verify (self-signed "
        "certificate); add its CA with SMTP_CA_FILE"
    )


def test_emailq_check_prints_the_same_sentence_as_the_worker_logs(monkeypatch):
    refused = ConnectionRefusedError(111, "Connection refused")
    monkeypatch.setattr(smtplib, "SMTP", failing_constructor(refused))

    with pytest.raises(ConnectFailed) as excinfo:
        _smtp(smtp_settings())

    reason = _reason(excinfo.value, smtp=True)
    assert reason.startswith(
        "cannot connect to smtp.example.com:587 (starttls): connection refused"
    )
    assert "ConnectionRefusedError" not in reason and PASSWORD not in reason


def test_a_server_without_login_names_the_password_and_server_settings():
    error = classify(smtplib.SMTPNotSupportedError("SMTP AUTH extension not supported by server."))

    assert "EMAIL_PASSWORD" in str(error) and "SMTP_SERVER/SMTP_PORT" in str(error)


# (b) refusals of the producer are whole sentences naming the field or variable


def test_a_line_break_in_an_address_is_refused_in_a_whole_sentence():
    with pytest.raises(InvalidEmail) as excinfo:
        validate_job({"to": "ann@example.com\nBcc: x@y.org", "subject": "s", "text": "t"},
                     smtp_settings())  # fmt: skip

    assert str(excinfo.value) == (
        "to: contains a line break ('\\n'); header values and addresses cannot contain "
        "line breaks or NUL characters"
    )


def test_a_missing_template_variable_names_the_template_and_the_variable():
    context = {"username": "Ann", "product": "Acme", "valid_hours": 24}  # no verify_url

    with pytest.raises(InvalidEmail) as excinfo:
        validate_job({"to": "ann@example.com", "template": "welcome", "context": context},
                     smtp_settings())  # fmt: skip

    assert str(excinfo.value) == (
        "context: template 'welcome' needs the variable 'verify_url', which is missing"
    )


# (c) refused recipients are named, with the server's reply, in the error itself


def test_a_permanent_refusal_names_each_refused_recipient_and_its_reply():
    result = SendResult((), {"carol@example.com": (550, "5.1.1 No such user")}, (250, ""))

    outcome = judge_result(result, earlier_failed={})

    assert isinstance(outcome.error, PermanentError)
    assert str(outcome.error) == (
        "1 recipient refused permanently: carol@example.com (550 5.1.1 No such user)"
    )


def test_a_deferral_names_the_deferred_recipients_but_counts_bcc_ones():
    refused = {"ann@example.com": (451, "4.2.0 Busy"), "secret@example.com": (451, "4.2.0 Busy")}
    result = SendResult(("bob@example.com",), refused, (250, ""))

    outcome = judge_result(result, earlier_failed={}, hidden={"secret@example.com"})

    message = str(outcome.error)
    assert message == "2 recipients deferred: ann@example.com (451 4.2.0 Busy) and 1 Bcc recipient"
    assert outcome.error.recipients == refused  # the dead-letter entry still lists them all


def test_every_recipient_refused_at_rcpt_is_named_without_a_dict_repr():
    exc = smtplib.SMTPRecipientsRefused({"dan@example.com": (550, b"5.1.1 Unknown")})

    outcome = judge_error(exc, ["dan@example.com"], attempts=1)

    assert str(outcome.error) == "1 recipient refused: dan@example.com (550 5.1.1 Unknown)"


# (f) a provider preset overridden by explicit variables is reported


def test_check_reports_a_preset_overridden_by_an_explicit_server_and_port():
    settings = smtp_settings(
        smtp_provider="gmail", smtp_server="localhost", smtp_port=1025, email_password=None
    )

    with pytest.raises(Notice) as notice:
        _preset(settings)

    assert str(notice.value).startswith(
        "SMTP_PROVIDER=gmail sets smtp.gmail.com:587 (starttls), but SMTP_SERVER/SMTP_PORT "
        "override it with localhost:1025 (none)"
    ), notice.value


def test_check_confirms_a_preset_used_as_it_is():
    settings = smtp_settings(smtp_provider="gmail", smtp_server="smtp.gmail.com", smtp_port=587)

    assert _preset(settings) == "SMTP_PROVIDER=gmail: smtp.gmail.com:587 (starttls)"


# (d) an expected dead-letter outcome is not logged as a bug


@pytest.mark.parametrize("task_name", ["emailq.send", "emailq.send_many"])
def test_celery_logs_expected_dead_letter_outcomes_without_a_traceback_and_bugs_with_one(
    task_name,
):
    from celery.app.trace import get_log_policy, log_policy_expected, log_policy_unexpected

    from emailq.worker.app import app
    from emailq.worker.delivery import WorkerLost

    task = app.tasks[task_name]
    einfo = SimpleNamespace(internal=False)
    expected = [TransientError("spent"), PermanentError("550"), InvalidEmail("bad"),
                JobExpired("old")]  # fmt: skip
    for exc in expected:
        assert get_log_policy(task, einfo, exc) is log_policy_expected, exc
    for bug in (KeyError("a bug"), WorkerLost("died")):
        assert get_log_policy(task, einfo, bug) is log_policy_unexpected, bug
