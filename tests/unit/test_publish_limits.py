"""The producer's limits without a Redis: the error tree, its messages, the timeout budget.

tests/integration/test_broker_down.py proves the same against unreachable and full Redis
servers; these pin the settings that make it hold.
"""

import pickle

import pytest
import redis
from kombu.exceptions import OperationalError

from emailq import BrokerUnavailable, ConfigurationError, EmailQError, InvalidEmail, QueueFull
from emailq.config import load_settings
from emailq.core import store
from emailq.core.app import make_app
from emailq.producer.publishing import (
    DEADLINE_S,
    STEP_S,
    bound_to_deadline,
    unreachable_as_broker_unavailable,
)

SECRET = "s3cret-pw"


def test_broker_unavailable_is_a_connection_error_and_queue_full_is_one_of_them():
    assert issubclass(BrokerUnavailable, ConnectionError)
    assert issubclass(BrokerUnavailable, EmailQError)
    assert issubclass(QueueFull, BrokerUnavailable)  # one `except` for "retry later"
    assert not issubclass(BrokerUnavailable, InvalidEmail | ValueError)


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@redis.internal:6379/0",
        f"rediss://user:{SECRET}@redis.internal:6380/1?ssl_cert_reqs=required",
        f"sentinel://:{SECRET}@s1:26379;sentinel://:{SECRET}@s2:26379",
        f"redis://:{SECRET}@redis.internal:not-a-port/0",
    ],
)
def test_the_message_names_redis_url_but_never_its_password(url):
    message = str(BrokerUnavailable.at(url, "ConnectionError: refused"))

    assert "REDIS_URL=" in message and "ConnectionError: refused" in message
    assert SECRET not in message


def test_queue_full_says_how_full_what_the_limit_is_and_what_to_do():
    error = QueueFull(91.4, 80.0)

    assert str(error).startswith("Redis memory use is 91% of maxmemory")
    assert "REDIS_SOFT_LIMIT_PERCENT=80" in str(error)
    assert "retry later" in str(error) and "raise Redis's maxmemory" in str(error)
    copy = pickle.loads(pickle.dumps(error))  # crosses process boundaries intact
    assert (type(copy), str(copy), copy.used_percent) == (QueueFull, str(error), 91.4)


@pytest.mark.parametrize(
    "raised",
    [
        redis.exceptions.ConnectionError("Error 111 connecting"),
        redis.exceptions.TimeoutError("Timeout reading from socket"),
        OperationalError("Error 111 connecting"),
        ConnectionResetError("reset by peer"),
    ],
)
def test_redis_kombu_and_socket_errors_become_broker_unavailable(raised):
    with pytest.raises(BrokerUnavailable) as caught, unreachable_as_broker_unavailable():
        raise raised

    assert caught.value.__cause__ is raised


def test_redis_refusing_a_write_for_memory_is_queue_full_even_through_kombu():
    oom = redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'")
    with pytest.raises(QueueFull), unreachable_as_broker_unavailable():
        try:
            raise oom
        except redis.exceptions.RedisError as exc:
            raise OperationalError(str(exc)) from exc  # what kombu's publish raises


def test_our_own_errors_and_other_errors_pass_through_unchanged():
    with pytest.raises(QueueFull), unreachable_as_broker_unavailable():
        raise QueueFull(95.0, 80.0)  # also an OSError: not re-wrapped as BrokerUnavailable
    with pytest.raises(KeyError), unreachable_as_broker_unavailable():
        raise KeyError("a bug is not an outage")


def test_the_producer_timeouts_fit_the_two_second_deadline():
    # One Redis step fails within a connect plus a reply; after a failed publish the key
    # release (a second step) must still fit, or it is skipped.
    assert store.PRODUCER_CONNECT_TIMEOUT_S + store.PRODUCER_SOCKET_TIMEOUT_S == STEP_S
    assert STEP_S < DEADLINE_S == 2.0


def test_the_producer_app_fails_fast_and_the_worker_app_keeps_waiting():
    from emailq.worker.app import app as worker_app

    producer_app = make_app()
    bound_to_deadline(producer_app)
    bound_to_deadline(producer_app)  # once is enough; twice changes nothing

    options = producer_app.conf.broker_transport_options
    assert options["socket_connect_timeout"] == store.PRODUCER_CONNECT_TIMEOUT_S
    assert options["socket_timeout"] == store.PRODUCER_SOCKET_TIMEOUT_S
    assert options["max_retries"] == 0
    assert not options.get("retry_on_timeout")  # it would turn off batch publishing
    assert producer_app.conf.task_publish_retry is False
    assert producer_app.conf.broker_connection_timeout == store.PRODUCER_CONNECT_TIMEOUT_S
    # The worker keeps Celery's patient defaults, with timeouts that never hang it forever
    worker_options = worker_app.conf.broker_transport_options
    assert worker_options["socket_timeout"] == store.SOCKET_TIMEOUT_S
    assert worker_options["socket_connect_timeout"] == store.CONNECT_TIMEOUT_S
    assert "max_retries" not in worker_options
    assert worker_app.conf.task_publish_retry is True


def test_every_redis_client_has_timeouts_and_the_producers_does_not_retry():
    settings = load_settings(redis_url="redis://127.0.0.1:1/0")

    worker = store.connect(settings).connection_pool.connection_kwargs
    producer = store.connect(
        settings,
        connect_timeout_s=store.PRODUCER_CONNECT_TIMEOUT_S,
        socket_timeout_s=store.PRODUCER_SOCKET_TIMEOUT_S,
    ).connection_pool.connection_kwargs

    assert (worker["socket_connect_timeout"], worker["socket_timeout"]) == (2.0, 10.0)
    assert (producer["socket_connect_timeout"], producer["socket_timeout"]) == (0.5, 1.0)
    assert store.producer_client().connection_pool.connection_kwargs["retry"].get_retries() == 0


def test_sentinels_are_asked_with_the_same_timeouts():
    settings = load_settings(redis_url=f"sentinel://:{SECRET}@s1:26379;sentinel://s2:26379/0")

    client = store.connect(settings, socket_timeout_s=1.0)

    for sentinel in client.connection_pool.sentinel_manager.sentinels:
        kwargs = sentinel.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == 1.0 and kwargs["socket_connect_timeout"] == 2.0


def test_the_soft_limit_defaults_to_80_percent_and_must_be_a_share():
    assert load_settings().redis_soft_limit_percent == 80.0
    assert load_settings(redis_soft_limit_percent=95).redis_soft_limit_percent == 95.0
    for wrong in (0, -5, 101):
        with pytest.raises(ConfigurationError, match="REDIS_SOFT_LIMIT_PERCENT"):
            load_settings(redis_soft_limit_percent=wrong)
