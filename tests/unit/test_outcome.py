"""Turning what the SMTP server said into an outcome: pure functions, no worker, no server."""

import smtplib
import socket

from emailq.core.errors import ConfigurationError, PermanentError, TransientError
from emailq.worker.outcome import judge_error, judge_result
from emailq.worker.sender import SendResult


def test_every_recipient_accepted_is_sent_and_final():
    outcome = judge_result(
        SendResult(("a@x.org", "b@x.org"), {}, (250, "2.0.0 queued")), earlier_failed={}
    )

    assert outcome.final == "sent" and outcome.error is None
    assert outcome.delivered == ("a@x.org", "b@x.org")
    assert outcome.attempt["outcome"] == "sent"
    assert outcome.attempt["smtp_code"] == 250


def test_a_deferred_recipient_makes_a_partial_outcome_that_retries_only_it():
    result = SendResult(("a@x.org",), {"b@x.org": (451, "4.2.0 mailbox busy")}, (250, "ok"))

    outcome = judge_result(result, earlier_failed={})

    assert outcome.final is None and outcome.attempt["outcome"] == "partial"
    assert outcome.delivered == ("a@x.org",)
    assert isinstance(outcome.error, TransientError)
    assert outcome.error.recipients == {"b@x.org": (451, "4.2.0 mailbox busy")}
    assert outcome.failed == {}


def test_a_permanently_refused_recipient_beside_delivered_ones_makes_the_job_partial():
    result = SendResult(("a@x.org",), {"b@x.org": (550, "5.1.1 no such user")}, (250, "ok"))

    outcome = judge_result(result, earlier_failed={})

    assert outcome.failed == {"b@x.org": (550, "5.1.1 no such user")}
    assert outcome.final == "partial" and outcome.error is None


def test_a_recipient_refused_in_an_earlier_attempt_makes_the_job_partial_once_the_rest_have_it():
    result = SendResult(("b@x.org",), {}, (250, "ok"))

    outcome = judge_result(result, earlier_failed={"a@x.org": (550, "5.1.1 no such user")})

    assert outcome.final == "partial" and outcome.error is None
    assert outcome.attempt["outcome"] == "partial"


def test_a_transient_refusal_wins_over_a_permanent_one_in_the_same_attempt():
    result = SendResult(
        ("a@x.org",),
        {"b@x.org": (550, "5.1.1 unknown"), "c@x.org": (452, "4.5.3 too many")},
        (250, "ok"),
    )

    outcome = judge_result(result, earlier_failed={})

    assert isinstance(outcome.error, TransientError)
    assert outcome.failed == {"b@x.org": (550, "5.1.1 unknown")}  # recorded as failed now
    assert outcome.error.permanent == {"b@x.org": (550, "5.1.1 unknown")}  # dead-lettered now


def test_a_refused_sender_is_permanent_for_every_pending_recipient():
    error = smtplib.SMTPSenderRefused(550, b"5.7.1 sender rejected", "me@x.org")

    outcome = judge_error(error, ["a@x.org", "b@x.org"], attempts=1)

    assert outcome is not None and isinstance(outcome.error, PermanentError)
    assert set(outcome.failed) == {"a@x.org", "b@x.org"}
    assert outcome.attempt["outcome"] == "permanent"


def test_a_disconnect_is_transient_and_fails_nobody():
    outcome = judge_error(smtplib.SMTPServerDisconnected("gone"), ["a@x.org"], attempts=2)

    assert outcome is not None and isinstance(outcome.error, TransientError)
    assert outcome.failed == {} and outcome.delivered == ()
    assert outcome.attempt["outcome"] == "transient"


def test_a_configuration_error_carries_its_attempt_count_for_spacing_deferrals():
    outcome = judge_error(socket.gaierror("no such host"), ["a@x.org"], attempts=3)
    assert outcome is not None and isinstance(outcome.error, TransientError)

    login = smtplib.SMTPAuthenticationError(535, b"5.7.8 credentials invalid")
    outcome = judge_error(login, ["a@x.org"], attempts=3)

    assert outcome is not None and isinstance(outcome.error, ConfigurationError)
    assert outcome.error.attempts == 3
    assert outcome.attempt["outcome"] == "configuration"


def test_an_error_that_is_not_a_delivery_failure_is_a_bug():
    assert judge_error(KeyError("a bug"), ["a@x.org"], attempts=1) is None
