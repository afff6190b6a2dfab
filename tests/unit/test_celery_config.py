"""The Celery app's configuration, as the worker will read it."""

from worker.celery import app


def test_json_is_the_only_serialisation():
    conf = app.conf
    assert conf.task_serializer == conf.result_serializer == "json"
    assert list(conf.accept_content) == list(conf.result_accept_content) == ["json"]


def test_jobs_are_acknowledged_after_sending_and_returned_if_the_worker_dies():
    assert app.conf.task_acks_late is True
    assert app.conf.task_reject_on_worker_lost is True
    assert app.conf.worker_prefetch_multiplier == 1


def test_queues_are_consumed_in_strict_priority_order():
    assert [q.name for q in app.conf.task_queues] == ["high", "normal"]
    assert app.conf.broker_transport_options["queue_order_strategy"] == "priority"


def test_visibility_timeout_applies_to_broker_and_result_backend():
    timeout = 3600  # the default; VISIBILITY_TIMEOUT_S is not set in tests
    assert app.conf.broker_transport_options["visibility_timeout"] == timeout
    assert app.conf.result_backend_transport_options["visibility_timeout"] == timeout


def test_killed_workers_jobs_are_swept_back_within_ten_seconds_of_the_timeout():
    options = app.conf.broker_transport_options
    assert options["unacked_restore_interval"] * options["unacked_restore_throttle"] <= 10


def test_startup_retries_the_broker_and_events_feed_flower():
    assert app.conf.broker_connection_retry_on_startup is True
    assert app.conf.worker_send_task_events is True
    assert app.conf.task_send_sent_event is False  # one Redis write per delay(), not two
    assert app.conf.broker_transport == "worker.backends:Transport"


def test_enqueue_email_is_registered_under_its_public_name():
    from producer import enqueue_email
    from producer.tasks import EmailTask

    assert enqueue_email.name == "emailq.send"
    assert isinstance(app.tasks["emailq.send"], EmailTask)


def test_transient_errors_retry_with_capped_exponential_backoff_and_full_jitter():
    from producer import enqueue_email
    from worker.errors import TransientError

    assert enqueue_email.autoretry_for == (TransientError,)
    assert enqueue_email.retry_backoff == 300
    assert enqueue_email.retry_backoff_max == 4000
    assert enqueue_email.retry_jitter is True
    assert enqueue_email.max_retries == 10


def test_beat_runs_the_monitoring_check_and_the_daily_report():
    from celery.schedules import crontab

    app.loader.import_default_modules()
    schedule = app.conf.beat_schedule
    assert schedule["check-system"]["task"] == "emailq.check_system"
    assert schedule["check-system"]["schedule"] == 60.0
    assert schedule["daily-report"]["task"] == "emailq.send_report"
    assert schedule["daily-report"]["schedule"] == crontab(minute=0, hour=7)
    assert {"emailq.check_system", "emailq.send_report"} <= set(app.tasks)


def test_publishing_reuses_one_redis_client_and_subscribes_to_no_result():
    from producer import enqueue_email

    with app.connection_for_write() as conn:
        channel = conn.default_channel
        assert channel._create_client() is channel._create_client()
    result = enqueue_email.delay(to="ann@example.com", subject="Hi", text="Hello")
    consumer = app.backend.result_consumer
    subscribed = consumer._pubsub.channels if consumer._pubsub is not None else {}
    assert not any(result.id.encode() in name for name in subscribed)
