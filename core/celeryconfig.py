"""Celery settings, derived from the one settings object; both sides' apps load them."""

from kombu import Queue as _Queue

from emailq.config import get_settings as _get_settings
from emailq.core.backends import result_backend_url as _result_backend_url
from emailq.core.store import CONNECT_TIMEOUT_S as _CONNECT_TIMEOUT_S
from emailq.core.store import SOCKET_TIMEOUT_S as _SOCKET_TIMEOUT_S

_settings = _get_settings()

broker_url = _settings.redis_url
_sentinel = _settings.redis_url.startswith("sentinel://")
# Celery's Redis classes minus two per-delay() costs (core/backends.py).
broker_transport = "emailq.core.backends:" + ("SentinelTransport" if _sentinel else "Transport")
result_backend = _result_backend_url(_settings.redis_url)
broker_connection_retry_on_startup = True

# JSON only: a pickle payload from the broker could run code in the worker.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# Acknowledge after the send, and give the job back if the worker process dies,
# so a crash never loses an email. Prefetch 1 keeps a normal backlog from sitting
# in front of a high-priority job inside the worker.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1

# Strict priority: kombu's default "round_robin" rotates the queue list after
# every fetch, so "-Q high,normal" would alternate. "priority" keeps the order, so
# BRPOP always looks at `high` first.
task_queues = (_Queue("high", routing_key="high"), _Queue("normal", routing_key="normal"))
task_default_queue = "normal"
task_create_missing_queues = False

_visibility: dict = {"visibility_timeout": _settings.visibility_timeout_s}
if _sentinel:
    _visibility["master_name"] = _settings.redis_sentinel_master
broker_transport_options = {
    **_visibility,
    "queue_order_strategy": "priority",
    # A killed worker's unacknowledged jobs are swept back every 5 s once older
    # than the visibility timeout; throttle 1 makes that interval the real period
    # (kombu's default sweeps only every 10th tick, about every 100 s).
    "unacked_restore_interval": 5,
    "unacked_restore_throttle": 1,
    # Without a socket timeout, a publish on a connection that Redis dropped silently (a
    # failover, a NAT or firewall timeout) waits forever. BRPOP is safe: the worker waits
    # for it in the event loop, where kombu's health check covers it, and Redis answers
    # every BRPOP within 1 s. The producer's app tightens these to fit its 2 s deadline
    # (emailq.producer.publishing). No retry_on_timeout: it turns off batch publishing.
    "socket_connect_timeout": _CONNECT_TIMEOUT_S,
    "socket_timeout": _SOCKET_TIMEOUT_S,
    "socket_keepalive": True,
}
result_backend_transport_options = dict(_visibility)
result_expires = 7 * 24 * 3600  # a week of results for `AsyncResult` look-ups

# Task events for Flower and `celery events`. No task-sent event: it would double the
# Redis writes of every `delay()`; queued jobs show in `emailq status` and Flower's
# broker page instead.
worker_send_task_events = True
task_send_sent_event = False
# No STARTED result per job: one Redis write fewer on the hot path; the tracking store
# and the task-started event (Flower) already say when a send begins.
task_track_started = False

# SMTP conversations are I/O: threads share one connection pool per process.
worker_pool = "threads"
worker_concurrency = (
    16  # threads per process, as `emailq worker` runs them (2 × 16 measured fastest)
)
worker_hijack_root_logger = True

# Periodic jobs for `celery -A emailq.worker beat` (`make beat`): the daily report and
# tracking retention. Both are thin; they run on the normal queue like any other job.
task_routes = {
    "emailq.send_report": {"queue": "normal"},
    "emailq.prune_tracking": {"queue": "normal"},
}
beat_schedule_filename = str(_settings.data_dir / "celerybeat-schedule")
beat_scheduler = "emailq.worker.periodic:Scheduler"  # creates EMAILQ_DATA_DIR if missing
