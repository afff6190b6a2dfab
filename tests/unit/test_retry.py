"""The one retry decision, for single jobs and chunks alike (``emailq.worker.retry``)."""

import os

import pytest
import redis
from kombu.exceptions import OperationalError
from sqlalchemy.exc import OperationalError as DatabaseError

from emailq.config import load_settings
from emailq.core.errors import (
    AuthenticationFailed,
    ConfigurationError,
    InvalidEmail,
    JobBusy,
    JobExpired,
    PermanentError,
    RateLimited,
    TransientError,
)
from emailq.worker.delivery import WorkerLost
from emailq.worker.retry import BUSY_RETRY_S, decide


@pytest.fixture(scope="module")
def settings():
    return load_settings(
        _env_file=os.devnull, max_retries=3, retry_backoff_base_s=10, retry_backoff_max_s=100,
        retry_jitter=False,
    )  # fmt: skip


def test_a_transient_failure_is_retried_with_growing_backoff_spending_the_budget(settings):
    decisions = [decide(TransientError("451"), retries=n, settings=settings) for n in range(3)]

    assert [d.action for d in decisions] == ["retry"] * 3
    assert [d.countdown for d in decisions] == [10, 20, 40]
    assert all(d.spends_budget for d in decisions)


def test_a_transient_failure_past_the_budget_is_dead_as_exhausted(settings):
    decision = decide(TransientError("451"), retries=3, settings=settings)

    assert (decision.action, decision.reason) == ("dead", "exhausted")


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (PermanentError("550 no such user"), "permanent"),
        (InvalidEmail("malformed job payload"), "invalid"),
        (WorkerLost("workers died sending it"), "crashed"),
        (JobExpired("waited longer than MAX_JOB_AGE_S"), "expired"),
        (KeyError("a bug"), "crashed"),
    ],
)
def test_what_can_never_succeed_is_dead_at_once_with_its_reason(settings, error, reason):
    decision = decide(error, retries=0, settings=settings)

    assert (decision.action, decision.reason) == ("dead", reason)


@pytest.mark.parametrize(
    "error",
    [
        redis.ConnectionError("Redis is down"),
        redis.TimeoutError("Redis is slow"),
        OperationalError("broker unreachable"),
        DatabaseError("SELECT 1", {}, Exception("database down")),
    ],
)
def test_redis_or_database_errors_are_infrastructure_never_crashed_never_budget(settings, error):
    for retries in (0, 3, 50):  # even past the budget
        decision = decide(error, retries=retries, settings=settings)

        assert decision.action == "wait"
        assert not decision.spends_budget


def test_a_busy_job_is_deferred_until_the_other_workers_lock_ends(settings):
    decision = decide(JobBusy("held", wait_s=6.2), retries=3, settings=settings)

    assert (decision.action, decision.countdown, decision.spends_budget) == (
        "defer", 8, False,
    )  # fmt: skip


def test_a_busy_deferral_never_exceeds_the_lock_ttl(settings):
    decision = decide(JobBusy("held", wait_s=3600), retries=3, settings=settings)

    assert decision.countdown == BUSY_RETRY_S


def test_a_rate_limited_job_waits_for_its_window_without_spending_the_budget(settings):
    decision = decide(RateLimited(wait_s=12.2), retries=3, settings=settings)

    assert (decision.action, decision.countdown, decision.spends_budget) == ("defer", 13, False)


@pytest.mark.parametrize(
    "error",
    [ConfigurationError("SMTP_SERVER: wrong"), AuthenticationFailed("535 credentials invalid")],
)
def test_a_configuration_error_is_deferred_forever_not_dead(settings, error):
    error.attempts = 4
    decision = decide(error, retries=10, settings=settings)

    assert (decision.action, decision.countdown, decision.spends_budget) == ("defer", 80, False)
