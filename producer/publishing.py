"""``EmailTask``: validate, de-duplicate, route by priority, park delays, then publish.

A Redis that cannot take the job raises ``BrokerUnavailable`` within ``DEADLINE_S``, even
when its host does not answer at all, and ``QueueFull`` when its memory is nearly used up.
Either way the job was not queued and its idempotency key is free again (at once, or
within CLAIM_TTL_S when Redis could not be told), so the caller can simply retry later.

One case stays ambiguous, as with any client timeout: a Redis that stalls (not dies) for
longer than the producer's socket timeout may still run the publish after the caller was
told it failed. A retry with the same ``idempotency_key`` within CLAIM_TTL_S then sends it
once; a later one sends it twice.
"""

import functools
import logging
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from celery import Celery, Task
from celery.utils import uuid
from kombu.exceptions import OperationalError

from emailq.config import get_settings
from emailq.core import delayed, events, store
from emailq.core.errors import BrokerUnavailable, EmailQError, InvalidEmail, QueueFull
from emailq.core.job import EmailJob, stamped
from emailq.core.keys import IDEMPOTENCY
from emailq.core.validation import validate_job

log = logging.getLogger(__name__)

DIRECT_CALL = (
    "enqueue_email(...) only queues a job: call enqueue_email.delay(...) or "
    "enqueue_email.apply_async(kwargs=...); a worker (celery -A emailq.worker worker) sends it"
)
DEADLINE_S = 2.0  # the contract: an unreachable broker raises BrokerUnavailable within this
# One Redis step on the producer's clients fails within this (a connect, then a reply).
STEP_S = store.PRODUCER_CONNECT_TIMEOUT_S + store.PRODUCER_SOCKET_TIMEOUT_S
# A claimed idempotency key lives this long until its job is published, then for
# IDEMPOTENCY_WINDOW_S. A claim whose release failed (Redis went away mid-publish) thus
# frees itself quickly instead of turning the caller's retry into a job that never existed,
# which a claim for the whole window would do for a day: losing an email is worse than the
# rare duplicate after a stalled Redis (above). Far longer than a publish (DEADLINE_S).
CLAIM_TTL_S = 10
MEMORY_CHECK_INTERVAL_S = 1.0  # INFO memory at most this often per process: delay() stays cheap

# What redis-py, kombu and the socket layer raise for a Redis that is down or silent.
_UNREACHABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OperationalError,
    OSError,
)


class EmailTask(Task):
    """A publish-only task: ``apply_async`` refuses bad input before anything is published.

    Its body never runs here: the worker registers the real one under the same name.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(DIRECT_CALL)

    def apply(self, *args: Any, **kwargs: Any) -> Any:  # Celery's local, eager execution
        raise TypeError(DIRECT_CALL)

    def apply_async(self, args=None, kwargs=None, task_id=None, **options):  # noqa: D102
        job = self.validate(args, kwargs)
        return self.publish(job, task_id=task_id, **options)

    def validate(self, args: Any = None, kwargs: dict[str, Any] | None = None) -> EmailJob:
        """The job ``kwargs`` describe, or ``InvalidEmail``; reads attachment files now."""
        if args:
            raise InvalidEmail("enqueue_email takes keyword arguments only")
        return validate_job(kwargs or {}, get_settings(), read_files=True)

    def delay_on_commit(self, *args: Any, **kwargs: Any) -> str:
        """Django: validate now, publish when the current transaction commits; the job id.

        Celery 5.4's name, which only its Django task class has. Bad input raises
        ``InvalidEmail`` here, inside the transaction; a rolled-back transaction publishes
        nothing, and outside any ``atomic`` block Django publishes at once. A
        ``BrokerUnavailable`` at commit comes out of the ``atomic`` block after the
        database commit, which stands: queue the email again (an ``idempotency_key`` makes
        that safe). With an ``idempotency_key`` already taken, the job that runs is the
        first one, not the id returned here.
        """
        return self.apply_async_on_commit(args, kwargs)

    def apply_async_on_commit(
        self, args: Any = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> str:
        """``apply_async`` (``countdown``, ``eta``...) when Django's transaction commits."""
        from django.db import transaction  # only applications that use Django have it

        job = self.validate(args, kwargs)
        task_id = options.pop("task_id", None) or uuid()
        transaction.on_commit(functools.partial(self.publish, job, task_id=task_id, **options))
        return task_id

    def publish(self, job: EmailJob, *, task_id: str | None = None, **options: Any) -> Any:
        """Publish an already validated job (``enqueue_bulk`` validates them all first)."""
        started = time.monotonic()
        bound_to_deadline(self.app)
        job = stamped(job)  # MAX_JOB_AGE_S counts from here
        task_id = task_id or uuid()
        with unreachable_as_broker_unavailable():
            ensure_room()
            if job.idempotency_key:
                first = claim_idempotency_key(job.idempotency_key, task_id)
                if first != task_id:  # the same key within the window: that job is this job
                    return self.AsyncResult(first)
        options.setdefault("queue", job.priority)  # the queues are named after the priorities
        options.setdefault("kwargsrepr", repr(job.summary()))  # what Flower shows: no bodies
        due = delayed.due_at(options.pop("countdown", None), options.pop("eta", None))
        try:
            with unreachable_as_broker_unavailable():
                if due is not None:
                    delayed.park(
                        store.producer_client(), task_id=task_id, kwargs=job.to_dict(),
                        queue=options["queue"], due=due, expires=options.get("expires"),
                    )  # fmt: skip
                    result = self.AsyncResult(task_id)
                else:
                    result = super().apply_async(kwargs=job.to_dict(), task_id=task_id, **options)
        except BaseException as exc:
            if job.idempotency_key:
                # Redis did not answer: try to free the key only if that still fits the
                # caller's deadline. Any other failure: Redis is up, so always free it.
                late = time.monotonic() - started + STEP_S > DEADLINE_S
                if isinstance(exc, BrokerUnavailable) and late:
                    log.warning("idempotency key %r stays claimed for up to %ss",
                                job.idempotency_key, CLAIM_TTL_S)  # fmt: skip
                else:
                    _release_quietly(job.idempotency_key, task_id)
            raise
        _confirm(job, result.id)
        return result


def _release_quietly(key: str, task_id: str) -> None:
    """Free a claimed key after a failed publish; a failed release leaves a short claim.

    Never raises: the caller must see why the publish failed, not why the release did.
    """
    try:
        release_idempotency_key(key, task_id)
    except (*_UNREACHABLE, redis.exceptions.RedisError) as exc:
        log.warning("idempotency key %r not released (%s); it expires within %ss",
                    key, exc, CLAIM_TTL_S)  # fmt: skip


def _confirm(job: EmailJob, job_id: str) -> None:
    """After the publish: keep the idempotency key for the window and record "queued".

    One round trip for both. The job is on its queue by now, so a failure here is logged,
    not raised: raising would make the caller publish the email a second time.
    """
    try:
        queued = [events.event("queued", job_id, job.tracking_info())]
        if not job.idempotency_key:  # one command: no pipeline to build
            events.push(store.producer_client(), queued)
            return
        pipe = store.producer_client().pipeline(transaction=False)
        pipe.expire(IDEMPOTENCY + job.idempotency_key, int(get_settings().idempotency_window_s))
        events.push(pipe, queued)
        pipe.execute()
    except (*_UNREACHABLE, redis.exceptions.RedisError) as exc:
        log.warning("job %s was queued, but its tracking event and idempotency window were "
                    "not recorded: %s", job_id, exc)  # fmt: skip


@contextmanager
def unreachable_as_broker_unavailable() -> Iterator[None]:
    """Redis, kombu and socket errors become ``BrokerUnavailable``; a full Redis ``QueueFull``."""
    try:
        yield
    except EmailQError:  # ours already (BrokerUnavailable is an OSError too): keep it as it is
        raise
    except BaseException as exc:
        if _caused_by(exc, redis.exceptions.OutOfMemoryError):
            raise QueueFull(100.0, get_settings().redis_soft_limit_percent) from exc
        if isinstance(exc, _UNREACHABLE):
            url = get_settings().redis_url
            raise BrokerUnavailable.at(url, f"{type(exc).__name__}: {exc}") from exc
        raise


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``exc`` or what it was raised from is a ``kind`` (kombu wraps redis-py's errors)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# (checked_at, percent), swapped whole: threads racing past the interval each ask once,
# which is harmless and keeps a lock off every delay().
_memory: tuple[float, float | None] | None = None


def ensure_room() -> None:
    """Refuse new jobs (``QueueFull``) above REDIS_SOFT_LIMIT_PERCENT of Redis's maxmemory.

    Under ``noeviction`` a full Redis refuses every write, the workers' own (ledger, locks,
    tracking events) included, so they could not drain the backlog that filled it. The
    reading is at most MEMORY_CHECK_INTERVAL_S old.
    """
    global _memory
    now = time.monotonic()
    reading = _memory
    if reading is None or now - reading[0] >= MEMORY_CHECK_INTERVAL_S:
        try:
            percent = store.memory_used_percent(store.producer_client())
        except redis.exceptions.ResponseError:  # INFO disabled (some managed Redis): no check
            percent = None
        reading = _memory = (now, percent)
    percent = reading[1]
    limit = get_settings().redis_soft_limit_percent
    if percent is not None and percent >= limit:
        raise QueueFull(percent, limit)


_bound_apps: "weakref.WeakSet[Celery]" = weakref.WeakSet()
_bound_lock = threading.Lock()


def bound_to_deadline(app: Celery) -> None:
    """Give the producer's Celery app broker timeouts that fit DEADLINE_S (once per app).

    Celery's defaults suit a worker, which may wait for its broker: a 4 s connection
    timeout, connection retries spaced 2 s apart, and three publish retries. Workers keep
    those (the shared ``emailq.core.celeryconfig``); the application's ``delay()`` has to
    answer. No publish retry: redis-py already replaces a pooled connection that Redis
    closed when it hands it out, so a retry could only wait on a host that just failed to
    answer. Runs before the app's first connection, which reads these settings.
    """
    if app in _bound_apps:
        return
    with _bound_lock:
        if app in _bound_apps:
            return
        conf = app.conf
        conf.broker_transport_options = {  # a new dict: the worker app may share the old one
            **conf.broker_transport_options,
            "socket_connect_timeout": store.PRODUCER_CONNECT_TIMEOUT_S,
            "socket_timeout": store.PRODUCER_SOCKET_TIMEOUT_S,
            "max_retries": 0,  # kombu's reconnect loop before publishing: one attempt
        }
        conf.broker_connection_timeout = store.PRODUCER_CONNECT_TIMEOUT_S
        conf.task_publish_retry = False
        _bound_apps.add(app)


def claim_idempotency_key(key: str, task_id: str) -> str:
    """The job id that owns ``key``: ``task_id`` if it is the first within the window.

    The claim lasts CLAIM_TTL_S; ``_confirm`` extends it to the window once the job is out.
    """
    client = store.producer_client()
    name = IDEMPOTENCY + key
    if client.set(name, task_id, nx=True, ex=CLAIM_TTL_S):
        return task_id
    owner = client.get(name)
    return owner.decode() if owner else task_id


def release_idempotency_key(key: str, task_id: str) -> None:
    client = store.producer_client()
    name = IDEMPOTENCY + key
    if (client.get(name) or b"").decode() == task_id:
        client.delete(name)
