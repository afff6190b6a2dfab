"""The Celery app's configuration, as the worker will read it."""

from emailq.worker.app import app


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
    timeout = 300  # the default; VISIBILITY_TIMEOUT_S is not set in tests
    assert app.conf.broker_transport_options["visibility_timeout"] == timeout
    assert app.conf.result_backend_transport_options["visibility_timeout"] == timeout


def test_killed_workers_jobs_are_swept_back_within_ten_seconds_of_the_timeout():
    options = app.conf.broker_transport_options
    assert options["unacked_restore_interval"] * options["unacked_restore_throttle"] <= 10


def test_startup_retries_the_broker_and_events_feed_flower():
    assert app.conf.broker_connection_retry_on_startup is True
    assert app.conf.worker_send_task_events is True
    assert app.conf.task_send_sent_event is False  # one Redis write per delay(), not two
    assert app.conf.broker_transport == "emailq.core.backends:Transport"


def test_enqueue_email_publishes_under_the_name_the_worker_runs():
    from emailq.producer import enqueue_email
    from emailq.producer.publishing import EmailTask
    from emailq.worker.tasks import WorkerTask

    assert enqueue_email.name == "emailq.send"
    assert isinstance(enqueue_email._get_current_object(), EmailTask)
    assert isinstance(app.tasks["emailq.send"], WorkerTask)
    assert enqueue_email.app is not app  # the application's app is not the worker's


def test_celery_never_retries_on_its_own():
    # Every retry is decided by emailq.worker.retry.decide, for single jobs and chunks alike.
    assert app.tasks["emailq.send"].max_retries is None
    assert not getattr(app.tasks["emailq.send"], "autoretry_for", ())
    assert app.tasks["emailq.send_many"].max_retries is None


def test_beat_runs_the_daily_report_and_leaves_monitoring_to_each_host():
    from celery.schedules import crontab

    app.loader.import_default_modules()
    schedule = app.conf.beat_schedule
    assert schedule["daily-report"]["task"] == "emailq.send_report"
    assert schedule["daily-report"]["schedule"] == crontab(minute=0, hour=7)
    assert "emailq.send_report" in app.tasks
    # a beat job runs on whichever worker takes it: hosts watch themselves instead
    assert "check-system" not in schedule and "emailq.check_system" not in app.tasks


def test_beat_prunes_the_tracking_store_daily_on_the_normal_queue():
    from celery.schedules import crontab

    app.loader.import_default_modules()
    entry = app.conf.beat_schedule["prune-tracking"]
    assert entry["task"] == "emailq.prune_tracking" and "emailq.prune_tracking" in app.tasks
    assert entry["schedule"] == crontab(minute=30, hour=3)
    assert app.conf.task_routes["emailq.prune_tracking"] == {"queue": "normal"}


def test_publishing_reuses_one_redis_client_and_subscribes_to_no_result():
    from emailq.producer import enqueue_email

    producer_app = enqueue_email.app
    with producer_app.connection_for_write() as conn:
        channel = conn.default_channel
        assert channel._create_client() is channel._create_client()
    result = enqueue_email.delay(to="ann@example.com", subject="Hi", text="Hello")
    consumer = producer_app.backend.result_consumer
    subscribed = consumer._pubsub.channels if consumer._pubsub is not None else {}
    assert not any(result.id.encode() in name for name in subscribed)


def test_the_config_module_holds_only_settings():
    # Celery reads every public name in it: an imported class or function would show up in
    # Flower's configuration tab as an "option"
    from emailq.core import celeryconfig

    public = {n: v for n, v in vars(celeryconfig).items() if not n.startswith("_")}
    assert not [n for n, v in public.items() if callable(v) or isinstance(v, type)], public
