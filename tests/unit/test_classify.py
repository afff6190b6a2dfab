"""``worker.classify``: every send failure is transient, permanent, a setting, or a bug."""

import smtplib
import socket
import ssl

import pytest

from emailq.core.errors import (
    AuthenticationFailed,
    ConfigurationError,
    PermanentError,
    TLSVerificationError,
    TransientError,
)
from emailq.worker.classify import classify, classify_reply

STAGES = ("rcpt", "data")


# classify_reply: basic reply codes


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("code", [421, 450, 451, 452])
def test_4xx_replies_are_transient(code, stage):
    assert classify_reply(code, "Try again later", stage=stage) is TransientError


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("code", [550, 551, 553, 554])
def test_5xx_replies_are_permanent(code, stage):
    assert classify_reply(code, "Rejected", stage=stage) is PermanentError


@pytest.mark.parametrize("stage", STAGES)
def test_an_empty_reply_text_falls_back_to_the_basic_code(stage):
    assert classify_reply(451, "", stage=stage) is TransientError
    assert classify_reply(550, "", stage=stage) is PermanentError


# classify_reply: enhanced status codes (RFC 3463)


@pytest.mark.parametrize("stage", STAGES)
def test_a_transient_enhanced_code_overrides_a_5xx_reply(stage):
    assert classify_reply(550, "4.2.2 Mailbox full", stage=stage) is TransientError


@pytest.mark.parametrize("stage", STAGES)
def test_a_permanent_enhanced_code_overrides_a_4xx_reply(stage):
    assert classify_reply(450, "5.1.1 Unknown", stage=stage) is PermanentError


@pytest.mark.parametrize("stage", STAGES)
def test_an_enhanced_code_after_leading_whitespace_still_counts(stage):
    assert classify_reply(550, "  4.2.2 Mailbox full", stage=stage) is TransientError


@pytest.mark.parametrize("stage", STAGES)
def test_an_enhanced_code_later_in_the_text_does_not_count(stage):
    assert classify_reply(550, "Mailbox full (4.2.2)", stage=stage) is PermanentError
    assert classify_reply(450, "Unknown user, see 5.1.1", stage=stage) is TransientError


@pytest.mark.parametrize("stage", STAGES)
def test_a_number_with_a_fourth_digit_group_is_not_an_enhanced_code(stage):
    assert classify_reply(550, "4.2.2000 blocked", stage=stage) is PermanentError


@pytest.mark.parametrize("stage", STAGES)
def test_an_ip_address_at_the_start_of_the_text_is_not_an_enhanced_code(stage):
    assert classify_reply(550, "4.2.2.1 is listed at a blocklist", stage=stage) is PermanentError


# classify_reply: 552


def test_552_without_an_enhanced_code_at_rcpt_is_transient():
    # RFC 5321 4.5.3.1.10: a 552 to RCPT (too many recipients) is to be treated as 452.
    assert classify_reply(552, "Too many recipients", stage="rcpt") is TransientError


def test_552_without_an_enhanced_code_at_data_is_permanent():
    assert classify_reply(552, "Message size exceeds limit", stage="data") is PermanentError


@pytest.mark.parametrize("stage", ["mail", "rcpt", "data", "connect"])
def test_552_with_a_permanent_enhanced_code_is_permanent_at_every_stage(stage):
    assert classify_reply(552, "5.3.4 Message too big", stage=stage) is PermanentError


# classify_reply: authentication


@pytest.mark.parametrize("code", [530, 534, 535])
@pytest.mark.parametrize("stage", ["mail", "rcpt", "data", "other"])
def test_auth_reply_codes_are_authentication_failures(code, stage):
    assert classify_reply(code, "Authentication required", stage=stage) is AuthenticationFailed


@pytest.mark.parametrize("code", [454, 535, 550, 554])
def test_enhanced_code_5_7_8_is_an_authentication_failure_whatever_the_basic_code(code):
    outcome = classify_reply(code, "5.7.8 Authentication credentials invalid", stage="rcpt")
    assert outcome is AuthenticationFailed


def test_an_authentication_failure_is_a_configuration_error_not_a_delivery_outcome():
    assert issubclass(AuthenticationFailed, ConfigurationError)
    assert not issubclass(AuthenticationFailed, TransientError)
    assert not issubclass(AuthenticationFailed, PermanentError)


# classify: SMTPRecipientsRefused


def test_every_recipient_refused_permanently_is_a_permanent_error_with_each_reply():
    exc = smtplib.SMTPRecipientsRefused(
        {
            "ann@example.com": (550, b"5.1.1 No such user"),
            "bob@example.com": (553, b"Mailbox name not allowed"),
        }
    )

    error = classify(exc)

    assert type(error) is PermanentError
    assert error.recipients == {
        "ann@example.com": (550, "5.1.1 No such user"),
        "bob@example.com": (553, "Mailbox name not allowed"),
    }
    assert error.smtp_code == 550
    assert error.smtp_text == "5.1.1 No such user"


def test_recipients_refused_with_any_transient_reply_is_a_transient_error():
    exc = smtplib.SMTPRecipientsRefused(
        {
            "ann@example.com": (550, b"5.1.1 No such user"),
            "bob@example.com": (451, b"4.3.0 Try again"),
        }
    )

    error = classify(exc)

    assert type(error) is TransientError
    assert error.recipients == {
        "ann@example.com": (550, "5.1.1 No such user"),
        "bob@example.com": (451, "4.3.0 Try again"),
    }


def test_recipients_refused_with_552_is_transient_because_it_is_the_rcpt_stage():
    exc = smtplib.SMTPRecipientsRefused({"ann@example.com": (552, b"Too many recipients")})
    assert type(classify(exc)) is TransientError


def test_recipients_refused_for_authentication_is_an_authentication_failure():
    exc = smtplib.SMTPRecipientsRefused(
        {"ann@example.com": (530, b"5.7.0 Authentication required")}
    )
    assert type(classify(exc)) is AuthenticationFailed


# classify: SMTP replies from other stages


def test_sender_refused_550_is_permanent():
    exc = smtplib.SMTPSenderRefused(550, b"5.7.1 Sender rejected", "alerts@example.com")

    error = classify(exc)

    assert type(error) is PermanentError
    assert error.smtp_code == 550
    assert error.smtp_text == "5.7.1 Sender rejected"


def test_data_error_451_is_transient():
    error = classify(smtplib.SMTPDataError(451, b"4.3.0 Local error in processing"))

    assert type(error) is TransientError
    assert error.smtp_code == 451
    assert error.smtp_text == "4.3.0 Local error in processing"


def test_data_error_550_is_permanent_although_smtplib_errors_are_oserrors():
    # The trap: a blanket OSError -> transient rule would retry this forever.
    exc = smtplib.SMTPDataError(550, b"5.7.1 Message rejected as spam")
    assert isinstance(exc, OSError)

    error = classify(exc)

    assert type(error) is PermanentError
    assert not isinstance(error, TransientError)


def test_data_error_552_without_an_enhanced_code_is_permanent():
    assert type(classify(smtplib.SMTPDataError(552, b"Message too large"))) is PermanentError


def test_reply_text_is_decoded_from_bytes_into_a_str():
    error = classify(smtplib.SMTPDataError(554, "5.6.0 Ung\u00fcltig".encode()))

    assert isinstance(error.smtp_text, str)
    assert error.smtp_text == "5.6.0 Ung\u00fcltig"


def test_undecodable_reply_bytes_do_not_break_classification():
    error = classify(smtplib.SMTPDataError(554, b"5.6.0 bad \xff byte"))

    assert type(error) is PermanentError
    assert isinstance(error.smtp_text, str)
    assert error.smtp_text.startswith("5.6.0 bad ")


# classify: authentication and configuration


def test_smtp_authentication_error_is_authentication_failed_and_names_the_password_setting():
    error = classify(smtplib.SMTPAuthenticationError(535, b"5.7.8 bad"))

    assert type(error) is AuthenticationFailed
    assert isinstance(error, ConfigurationError)
    assert not isinstance(error, TransientError | PermanentError)
    assert "EMAIL_PASSWORD" in str(error)
    assert error.smtp_code == 535
    assert error.smtp_text == "5.7.8 bad"


def test_smtp_not_supported_is_a_configuration_error():
    error = classify(smtplib.SMTPNotSupportedError("STARTTLS extension not supported by server."))

    assert type(error) is ConfigurationError


def test_an_unverified_certificate_is_a_configuration_error_not_a_network_blip():
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    assert isinstance(exc, ssl.SSLError)  # the transient rule must not catch it first

    assert type(classify(exc)) is ConfigurationError


def test_tls_verification_error_passes_through_unchanged():
    exc = TLSVerificationError("SMTP_CA_FILE: certificate did not verify")
    assert classify(exc) is exc


# classify: network failures


def test_server_disconnected_is_transient():
    error = classify(smtplib.SMTPServerDisconnected("Connection unexpectedly closed"))
    assert type(error) is TransientError


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connection refused"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError("timed out"),
        socket.timeout("timed out"),  # noqa: UP041 - the alias callers still raise
        socket.gaierror(-3, "Temporary failure in name resolution"),
        ssl.SSLError(1, "record layer failure"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_network_failures_are_transient(exc):
    assert type(classify(exc)) is TransientError


# classify: pass-through and bugs


@pytest.mark.parametrize(
    "exc",
    [TransientError("later", smtp_code=451), PermanentError("never", smtp_code=550)],
    ids=["transient", "permanent"],
)
def test_an_already_classified_error_passes_through_as_the_same_object(exc):
    assert classify(exc) is exc


@pytest.mark.parametrize(
    "exc",
    [ValueError("bad value"), KeyError("missing"), ZeroDivisionError("division by zero")],
    ids=lambda exc: type(exc).__name__,
)
def test_a_programming_error_is_not_a_delivery_failure(exc):
    assert classify(exc) is None
