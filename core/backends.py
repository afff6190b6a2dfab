"""Celery's Redis transport and result backend, without two costs per ``delay()``, and a
consumer that one malformed queue item cannot stop.

- kombu's Redis channel builds a new ``redis.Redis`` object (and its table of ~170 reply
  callbacks) for every message it publishes, which costs more CPU than the LPUSH itself.
  These channels keep one: redis-py clients are thread-safe and share the channel's pool.
- Celery's Redis result backend SUBSCRIBEs to every job's result channel as it is
  published, and UNSUBSCRIBEs when the ``AsyncResult`` is collected: two round trips for
  results that are rarely awaited. ``AsyncResult.get()`` still subscribes when called, and
  then reads the stored result, so a job that finished before ``get()`` is still found.
- Celery's backend reads a result before storing it (so a late failure cannot overwrite a
  success), then stores it in a MULTI/EXEC transaction: two round trips per job. A
  success has nothing to guard against (another success of the same job says the same),
  so it is stored in one round trip: SETEX and PUBLISH, pipelined.
- A job that ends with everyone sent has its result stored and its acknowledgement made
  by the worker's ledger record, in the same Redis script (``emailq.worker.completion``):
  the backend and the QoS skip their own writes for the task ids and delivery tags
  handed to ``skip_store`` and ``skip_ack``.
- kombu takes a job off a queue and records it as unacknowledged in two round trips; a
  crash between them lost the job. These channels do both in one script
  (``emailq.core.fetch``).
- kombu decodes each item it pops from a queue list and builds its message without a
  guard: an item that is not a kombu envelope (``LPUSH normal garbage``, a JSON list, an
  object without ``properties.delivery_tag``...) raised out of the consumer and stopped the
  worker, or was dropped as a "lost connection". These channels move such an item to
  ``emailq:quarantine`` (a JSON record with the queue, the raw item and the error), log an
  ERROR, and go on with the next item.
"""

import json
import logging
import os
import time
from datetime import datetime
from functools import cached_property
from queue import Empty
from typing import Any

from celery import states
from celery.backends import redis as celery_redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis import exceptions as redis_errors
from redis.commands.core import Script

from emailq.core.fetch import QUARANTINE_RAW_BYTES, AtomicFetch
from emailq.core.keys import QUARANTINE

log = logging.getLogger(__name__)

# Task ids whose result, and delivery tags whose acknowledgement, another write already made
# (the ledger record of a sent job); each is taken out when Celery comes to write it.
_STORED: set[str] = set()
_ACKED: set[str] = set()
# The process whose consumer acknowledges (where a QoS was made). A task run in a pool's
# child process (-P processes) leaves the ack to the parent, which makes its own write.
_ACKING_PID: int | None = None

_LOG_EXCERPT_BYTES = 48  # of an item shown in the log: its repr stays under 200 chars
_ERROR_CHARS = 200  # kombu's JSON errors can quote the whole object


class _ReusedClient:
    def _create_client(self, asynchronous: bool = False):  # noqa: ANN202 - kombu's signature
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        transport = self.connection  # type: ignore[attr-defined]
        if self._pool is None and (transport is None or transport.client is None):  # type: ignore[attr-defined]
            # The channel was closed, or the kombu Connection released its transport (Celery
            # does both on a broker error, then may still ack a job that finished): kombu's
            # new pool would fail with an AttributeError, which stopped the worker. A
            # connection error is what kombu's callers expect and log.
            raise redis_errors.ConnectionError("the broker connection was closed")
        client = self.__dict__.get("_sync_client")
        if client is None or client.connection_pool is not self.pool:  # type: ignore[attr-defined]
            client = self.__dict__["_sync_client"] = super()._create_client()  # type: ignore[misc]
        return client


class MalformedItem(ValueError):
    """A queue item that kombu cannot turn into a message."""


def envelope_problem(payload: object) -> str | None:
    """Why a decoded queue item is not the envelope kombu publishes, or None if it is.

    kombu's ``Channel.prepare_message`` always writes these keys; everything that reads a
    message (kombu's ``Message``, its QoS, Celery's consumer) indexes them without a check.
    """
    if not isinstance(payload, dict):
        return f"not a message envelope but a JSON {type(payload).__name__}"
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        return "no 'properties' object"
    tag = properties.get("delivery_tag")
    if not isinstance(tag, str) or not tag:
        return "no 'properties.delivery_tag' string"
    info = properties.get("delivery_info")
    if not isinstance(info, dict) or not all(
        isinstance(info.get(key), str) for key in ("exchange", "routing_key")
    ):
        return "no 'properties.delivery_info' with exchange and routing_key strings"
    if not isinstance(payload.get("body"), str):
        return "no 'body' string"
    if not isinstance(payload.get("headers"), dict):
        return "no 'headers' object"
    for key in ("content-type", "content-encoding"):
        if not isinstance(payload.get(key), str):
            return f"no {key!r} string"
    return None


class _CheckedMessage(virtual.Message):
    """kombu's message, raising ``MalformedItem`` (and nothing else) for a bad envelope.

    kombu builds the message before it records the delivery as unacknowledged, so an
    envelope refused here left no trace in its QoS: there is nothing to ack or restore.
    """

    def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
        problem = envelope_problem(payload)
        if problem is None:
            try:
                super().__init__(payload, channel=channel, **kwargs)
                return
            except Exception as exc:  # noqa: BLE001 - e.g. a body its body_encoding cannot decode
                problem = f"{type(exc).__name__}: {exc}"
        raise MalformedItem(problem)


class _QuarantinesMalformed:
    """Moves queue items kombu cannot deliver to ``QUARANTINE`` instead of raising.

    Both of kombu's reading paths are kombu 5.7's code with the decoding guarded: the
    BRPOP read the worker consumes with, and ``_get`` behind ``basic_get``. An item popped
    from a list exists nowhere else, so a refused one is always written somewhere.
    """

    Message = _CheckedMessage

    def _brpop_read(self, **options: Any) -> bool:
        # kombu 5.7's Channel._brpop_read, except the decode-and-deliver step (tests pin its
        # source: tests/integration/test_malformed_queue.py).
        chan: Any = self  # kombu's Channel: kombu has no type hints
        try:
            try:
                dest__item = chan.client.parse_response(chan.client.connection, "BRPOP", **options)
            except chan.connection_errors:
                # Disconnect so that the next poll reconnects.
                chan.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            queue = bytes_to_str(dest).rsplit(chan.sep, 1)[0]
            chan._queue_cycle.rotate(queue)
            try:
                # The message is built (and refused) before kombu adds it to `unacked`.
                chan.connection._deliver(_decode(item), queue)
            except MalformedItem as exc:
                self._quarantine(queue, item, exc)
            return True
        finally:
            chan._in_poll = None
            # The BRPOP connection is idle here: kombu flushes a pending re-auth token now.
            chan._flush_brpop_reauth()

    def _deliver_recorded(self, queue: str, item: bytes, tag: str) -> None:
        """Deliver an item the fetch script recorded in ``unacked`` under ``tag``."""
        chan: Any = self
        try:
            payload = _decode(item)
            if envelope_problem(payload) is None and payload["properties"]["delivery_tag"] != tag:
                raise MalformedItem("the delivery tag differs from the one Redis read")
            chan.connection._deliver(payload, queue)
        except MalformedItem as exc:
            self._quarantine(queue, item, exc)
            with chan.conn_or_acquire() as client:  # its unacked entry would restore it
                client.pipeline().zrem(chan.unacked_index_key, tag).hdel(
                    chan.unacked_key, tag
                ).execute()

    def _get(self, queue: str) -> dict[str, Any]:
        # kombu 5.7's Channel._get, going on to the next item past a malformed one.
        chan: Any = self
        with chan.conn_or_acquire() as client:
            for pri in chan.priority_steps:
                while item := client.rpop(chan._q_for_pri(queue, pri)):
                    try:
                        payload = _decode(item)
                        # basic_get builds the message after this returns, out of reach of
                        # the raw item; build it once here (basic_get is not the worker's path).
                        chan.Message(payload, channel=self)
                    except MalformedItem as exc:
                        self._quarantine(queue, item, exc)
                        continue
                    chan._maybe_update_queues_expire(client, queue)
                    return payload
            chan._maybe_update_queues_expire(client, queue)
            raise Empty()

    def _quarantine(self, queue: str, item: bytes, exc: MalformedItem) -> None:
        error = str(exc)[:_ERROR_CHARS]
        excerpt = repr(item[:_LOG_EXCERPT_BYTES])
        record = {
            "queue": queue,
            "raw": item[:QUARANTINE_RAW_BYTES].decode("utf-8", errors="replace"),
            "size": len(item),  # larger than `raw` says the record holds only its start
            "error": error,
            "at": time.time(),
        }
        try:
            with self.conn_or_acquire() as client:  # type: ignore[attr-defined]
                client.lpush(QUARANTINE, json.dumps(record))
        except Exception:  # noqa: BLE001 - the log is the last copy left; the next BRPOP
            # meets a broker outage like any other and reconnects.
            log.critical(
                "queue %s: malformed item of %d bytes LOST, quarantine write failed (%s); "
                "starts %s", queue, len(item), error, excerpt, exc_info=True,
            )  # fmt: skip
            return
        self._log_quarantined(queue, item, error)

    def _log_quarantined(self, queue: str, item: bytes, error: str) -> None:
        log.error(
            "queue %s: malformed item of %d bytes moved to %s: %s; starts %s",
            queue, len(item), QUARANTINE, error, repr(item[:_LOG_EXCERPT_BYTES]),
        )  # fmt: skip


def _decode(item: bytes) -> Any:
    # As kombu decodes (bytes_to_str replaces invalid UTF-8), but a failure is the item's fault.
    try:
        return loads(bytes_to_str(item))
    except Exception as exc:  # noqa: BLE001 - kombu's object hook raises more than ValueError
        raise MalformedItem(f"not JSON: {type(exc).__name__}: {exc}") from exc


# An acknowledgement: the job leaves the unacked index and hash in one script, where
# kombu sends a MULTI/ZREM/HDEL/EXEC transaction (the same effect, more work per job).
_ACK = """
redis.call('zrem', KEYS[1], ARGV[1])
redis.call('hdel', KEYS[2], ARGV[1])
return 1
"""


def skip_store(task_id: str) -> None:
    """The result of ``task_id`` is stored: the backend skips its own write of the success."""
    _STORED.add(task_id)


def skip_ack(delivery_tag: str) -> None:
    """The job under ``delivery_tag`` left ``unacked``: the QoS only forgets it in memory.

    Only where this process's QoS will ack it: a pool child never does, so nothing is kept
    there (the parent's ack then removes what is already gone, harmlessly)."""
    if os.getpid() == _ACKING_PID:
        _ACKED.add(delivery_tag)


class QoS(kombu_redis.QoS):
    """kombu's acknowledgement emulation, minus the write the fetch script already made, an
    acknowledgement in one script, and a channel close that survives a broker gone away."""

    _ack_script: Script | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        global _ACKING_PID
        super().__init__(*args, **kwargs)
        _ACKING_PID = os.getpid()

    def ack(self, delivery_tag: str) -> None:
        if delivery_tag in _ACKED:
            _ACKED.discard(delivery_tag)
            virtual.QoS.ack(self, delivery_tag)
            return
        with self.channel.conn_or_acquire() as client:
            if self._ack_script is None:
                self._ack_script = client.register_script(_ACK)  # loads it again if Redis forgot
            self._ack_script(
                keys=[self.unacked_index_key, self.unacked_key], args=[delivery_tag], client=client
            )
        virtual.QoS.ack(self, delivery_tag)

    def restore_unacked(self, client: Any = None) -> None:
        # On close, kombu puts the jobs this channel took but did not finish back on their
        # queues. Without Redis that is impossible and not needed: their `unacked` entries
        # hold them, and the visibility timeout gives them back. kombu let the error out of
        # Channel.close, which stopped the worker.
        try:
            super().restore_unacked(client)
        except self.channel.connection_errors as exc:
            log.warning(
                "%d unfinished job(s) left in Redis's unacked set (%s): they are given back "
                "after VISIBILITY_TIMEOUT_S", len(self._delivered), exc,
            )  # fmt: skip
            self._delivered.clear()

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag == getattr(self.channel, "_recorded_tag", None):
            virtual.QoS.append(self, message, delivery_tag)  # only the in-memory record
        else:
            super().append(message, delivery_tag)


class Channel(_ReusedClient, AtomicFetch, _QuarantinesMalformed, kombu_redis.Channel):
    QoS = QoS


class SentinelChannel(
    _ReusedClient, AtomicFetch, _QuarantinesMalformed, kombu_redis.SentinelChannel
):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


class _SubscribeOnGet:
    def on_task_call(self, producer, task_id) -> None:  # noqa: ANN001 - Celery's signature
        """Nothing at publish time: ``get()`` subscribes when a caller waits."""


class StoreSuccessOnce:
    @cached_property
    def _extended(self) -> bool:
        return bool(self.app.conf.find_value_for_key("extended", "result"))  # type: ignore[attr-defined]

    def _store_result(self, task_id, result, state, traceback=None, request=None, **kwargs):  # noqa: ANN001, ANN202 - Celery's signature
        if state != states.SUCCESS:  # may not overwrite a success: Celery's read-then-write
            return super()._store_result(
                task_id, result, state, traceback=traceback, request=request, **kwargs
            )
        if task_id in _STORED:
            _STORED.discard(task_id)
            return result
        self.ensure(self._set_published, self.success_write(task_id, result, request))
        return result

    def success_write(self, task_id: str, result: Any, request: Any) -> tuple[bytes, str]:
        """The key and the value Celery stores for a success (``result`` already encoded)."""
        if self._extended:
            meta = self._get_result_meta(result=result, state=states.SUCCESS, traceback=None,
                                         request=request)  # fmt: skip
        else:  # Celery's meta, without its per-call configuration look-ups
            meta = {
                "status": states.SUCCESS, "result": result, "traceback": None,
                "children": [r.as_tuple() for r in getattr(request, "children", None) or ()]
                if request else None,
                "date_done": datetime.now(self.app.timezone).isoformat(),  # type: ignore[attr-defined]
            }  # fmt: skip
            for name in ("group", "parent_id"):
                if request is not None and getattr(request, name, None):
                    meta["group_id" if name == "group" else name] = getattr(request, name)
        meta["task_id"] = bytes_to_str(task_id)
        value = self.encode(meta)
        if len(value) > self._MAX_STR_VALUE_SIZE:
            raise celery_redis.BackendStoreError("value too large for Redis backend")
        return self.get_key_for_task(task_id), value

    def _set_published(self, key: bytes, value: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        if self.expires:
            pipe.setex(key, self.expires, value)
        else:
            pipe.set(key, value)
        pipe.publish(key, value)
        pipe.execute()


class RedisBackend(_SubscribeOnGet, StoreSuccessOnce, celery_redis.RedisBackend):
    pass


class SentinelBackend(_SubscribeOnGet, StoreSuccessOnce, celery_redis.SentinelBackend):
    pass


def result_backend_url(url: str) -> str:
    """``result_backend`` naming these classes, in Celery's ``module:Class+url`` form."""
    cls = "SentinelBackend" if url.startswith("sentinel://") else "RedisBackend"
    return f"{__name__}:{cls}+{url}"
