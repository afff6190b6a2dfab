"""Taking a job off a queue and recording it as unacknowledged in one step.

kombu's Redis transport takes a message with ``BRPOP`` and records it in ``unacked`` (the
hash its visibility timeout restores from) in a second round trip. A worker or a Redis
killed between the two leaves the job nowhere: popped, persisted as popped, never started.

Here one Lua script does both, atomically (Redis runs a script alone, and writes its
effects to the AOF and to replicas as one ``MULTI``/``EXEC``): it reads the oldest item of
the first non-empty queue, records it in ``unacked``/``unacked_index`` and only then pops
it. An item that is not a kombu envelope is moved to the quarantine list in the same step.
One call takes as many items this way as the channel's prefetch credit allows (at most
``FETCH_MAX``), each from the first non-empty queue at its turn: a busy worker whose
threads freed several slots fills them with one round trip and one pass of the event loop.
Nothing is written before the reads succeed, so a refused write (a full ``noeviction``
Redis) leaves the queue as it was.

A script cannot block, so a channel whose fetch found nothing, or took fewer items than
it had room for (it emptied every queue), waits with ``BRPOP`` on a per-queue wake-up list
that these channels push to whenever they publish (``WAKE`` + queue, capped at
``WAKE_CAP`` entries), for at most ``brpop_timeout`` (1 s), then looks again. A job
published by another kombu client rings no bell and is found within that second.
"""

import hashlib
import logging
import time
from queue import Empty
from typing import Any

from kombu.utils.json import dumps
from redis.exceptions import NoScriptError

from emailq.core.keys import QUARANTINE, WAKE

log = logging.getLogger(__name__)

WAKE_CAP = 64  # wake-up entries kept per queue: enough to wake every idle consumer
FETCH_MAX = 16  # items one fetch takes at most, within the channel's prefetch credit
QUARANTINE_RAW_BYTES = 64 * 1024  # of an item kept in its record: enough to see what it was

# KEYS: the queue lists in the order to take from, then unacked, unacked_index, quarantine.
# ARGV: the time now, the bytes of a refused item kept in its quarantine record, the most
# items to take. Each item is the oldest of the first non-empty queue at its turn, so a job
# in an earlier queue is never taken after one in a later queue.
# Returns nil when every queue is empty, else a list of {key index, item, delivery tag,
# problem}: the tag is "" and the problem says why for an item moved to the quarantine.
FETCH_SCRIPT = r"""
local n = #KEYS - 3
local unacked, index, quarantine = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3]

-- Invalid UTF-8 replaced by U+FFFD, a maximal subpart at a time (as Python's "replace").
local FFFD = '\239\191\189'
local function valid_utf8(s)
  if not string.find(s, '[\128-\255]') then return s end
  local out, i, len = {}, 1, #s
  while i <= len do
    local j = string.find(s, '[\128-\255]', i)
    if not j then out[#out + 1] = string.sub(s, i); break end
    out[#out + 1] = string.sub(s, i, j - 1)
    local c = string.byte(s, j)
    local need, lo, hi = 0, 0x80, 0xBF
    if c >= 0xC2 and c <= 0xDF then need = 1
    elseif c >= 0xE0 and c <= 0xEF then
      need = 2
      if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
    elseif c >= 0xF0 and c <= 0xF4 then
      need = 3
      if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
    end
    local good = 0
    while good < need do
      local b = string.byte(s, j + 1 + good)
      if not b or b < lo or b > hi then break end
      good, lo, hi = good + 1, 0x80, 0xBF
    end
    if need > 0 and good == need then
      out[#out + 1] = string.sub(s, j, j + need)
    else
      out[#out + 1] = FFFD
    end
    i = j + 1 + good
  end
  return table.concat(out)
end

local function problem(item)
  local ok, msg = pcall(cjson.decode, item)
  if not ok then return 'not JSON', nil end
  if type(msg) ~= 'table' then return 'not a message envelope but a JSON ' .. type(msg), nil end
  if msg[1] ~= nil then return 'not a message envelope but a JSON list', nil end
  local props = msg.properties
  if type(props) ~= 'table' then return "no 'properties' object", nil end
  if type(props.delivery_tag) ~= 'string' or props.delivery_tag == '' then
    return "no 'properties.delivery_tag' string", nil
  end
  local info = props.delivery_info
  if type(info) ~= 'table' or type(info.exchange) ~= 'string'
      or type(info.routing_key) ~= 'string' then
    return "no 'properties.delivery_info' with exchange and routing_key strings", nil
  end
  return nil, props
end

local taken, want = {}, tonumber(ARGV[3])
local i = 1
while i <= n and #taken < want do
  local item = redis.call('LINDEX', KEYS[i], -1)
  if not item then
    i = i + 1
  else
    local why, props = problem(item)
    if why then
      redis.call('LPUSH', quarantine, cjson.encode({
        queue = KEYS[i], error = why, size = #item, at = tonumber(ARGV[1]),
        raw = valid_utf8(string.sub(item, 1, tonumber(ARGV[2]))),
      }))
      redis.call('RPOP', KEYS[i])
      taken[#taken + 1] = {i, item, '', why}
    else
      local info = props.delivery_info
      -- kombu's QoS.append writes [message, exchange, routing_key]; the item is kept verbatim.
      redis.call('HSET', unacked, props.delivery_tag, '[' .. item .. ',' ..
        cjson.encode(info.exchange) .. ',' .. cjson.encode(info.routing_key) .. ']')
      redis.call('ZADD', index, ARGV[1], props.delivery_tag)
      redis.call('RPOP', KEYS[i])
      taken[#taken + 1] = {i, item, props.delivery_tag, ''}
    end
  end
end
if #taken == 0 then return nil end
return taken
"""
# The job, then a wake-up entry unless WAKE_CAP are already waiting. Nothing is written if
# the LPUSH is refused (a full noeviction Redis).
PUT_SCRIPT = """
redis.call('LPUSH', KEYS[1], ARGV[1])
if redis.call('LLEN', KEYS[2]) < tonumber(ARGV[2]) then redis.call('LPUSH', KEYS[2], 1) end
return 1
"""
_SCRIPT_SHA = hashlib.sha1(FETCH_SCRIPT.encode()).hexdigest()  # noqa: S324 - Redis's script id


class AtomicFetch:
    """A kombu Redis channel that consumes with ``FETCH_SCRIPT``, and rings on publish.

    Replaces kombu 5.7's ``_brpop_start``/``_brpop_read`` pair; kombu's poller, health
    check and pausing treat the script's reply as they treat a BRPOP reply. A channel
    with a ``global_keyprefix`` keeps kombu's own commands.
    """

    _recorded_tag: str | None = None  # the tag the script recorded, while it is delivered
    _sent: str | None = None  # "fetch" or "wait": the command awaiting its reply
    _sent_keys: list[str] = []  # noqa: RUF012 - replaced per channel, never mutated
    _waiting = False  # the last fetch left every queue empty
    _sent_room = 1  # the most items the fetch awaiting its reply may take
    _script_cached = False  # Redis has run FETCH_SCRIPT since it last started
    _refusal: str | None = None  # the error Redis last refused a fetch with, until one works

    def _brpop_start(self, timeout: float | None = None) -> None:
        chan: Any = self
        if chan.global_keyprefix:
            return super()._brpop_start(timeout)  # type: ignore[misc]
        queues = chan._queue_cycle.consume(len(chan.active_queues))
        if not queues:
            return None
        if self._waiting:
            keys = [WAKE + queue for queue in queues]
            args = ["BRPOP", *keys, chan.brpop_timeout if timeout is None else timeout or 0]
            self._sent = "wait"
        else:
            keys = [chan._q_for_pri(q, pri) for pri in chan.priority_steps for q in queues]
            keys += [chan.unacked_key, chan.unacked_index_key, QUARANTINE]
            self._sent_room = self._room()
            argv = [repr(time.time()), QUARANTINE_RAW_BYTES, self._sent_room]
            if self._script_cached:
                args = ["EVALSHA", _SCRIPT_SHA, len(keys), *keys, *argv]
            else:
                args = ["EVAL", FETCH_SCRIPT, len(keys), *keys, *argv]
            self._sent, self._sent_keys = "fetch", keys
        chan._in_poll = chan.client.connection
        chan._brpop_sent_at = time.monotonic()
        chan.client.connection.send_command(*args)
        return None

    def _brpop_read(self, **options: Any) -> bool:
        chan: Any = self
        if chan.global_keyprefix:
            return super()._brpop_read(**options)  # type: ignore[misc]
        sent, self._sent = self._sent, None
        try:
            try:
                reply = chan.client.parse_response(chan.client.connection, "EVALSHA", **options)
            except chan.connection_errors:
                chan.client.connection.disconnect()  # the next poll reconnects
                raise
            except chan.ResponseError as exc:
                return self._refused(sent, exc)
            if sent != "fetch":  # a wake-up or the wait's timeout: look again
                self._waiting = False
                raise Empty()
            self._script_cached = True
            if self._refusal is not None:
                log.warning("taking jobs from Redis works again")
                self._refusal = None
            if reply is None:
                self._waiting = True
                raise Empty()
            # Fewer items than it had room for: it emptied every queue. The channel waits for
            # a wake-up rather than spend a fetch on finding nothing (jobs that trickle in
            # cost one fetch each, not two).
            self._waiting = len(reply) < self._sent_room
            self._deliver_all(reply)
            return True
        finally:
            chan._in_poll = None
            # The connection is idle here: kombu flushes a pending re-auth token now.
            chan._flush_brpop_reauth()

    def _room(self) -> int:
        """Items one fetch may take: the prefetch credit left, at most ``FETCH_MAX``."""
        chan: Any = self
        room = chan.qos.can_consume_max_estimate()
        return FETCH_MAX if room is None else max(1, min(room, FETCH_MAX))

    def _deliver_all(self, reply: list) -> None:
        """Deliver every item of one fetch; one that fails leaves the others delivered.

        Each is in ``unacked`` already: one whose delivery raised comes back after the
        visibility timeout, like a job whose worker died. The first error is raised last.
        """
        error: BaseException | None = None
        for index, item, tag, problem in reply:
            try:
                self._deliver_fetched(self._sent_keys[int(index) - 1], item, tag, problem)
            except Exception as exc:  # noqa: BLE001 - raised below, after the rest
                error = error or exc
        if error is not None:
            raise error

    def _refused(self, sent: str | None, exc: Exception) -> bool:
        if isinstance(exc, NoScriptError):  # Redis restarted or flushed its script cache
            self._script_cached = False
            raise Empty() from exc
        # e.g. OOM on a full noeviction Redis, or READONLY during a failover: nothing was
        # taken. Wait (up to brpop_timeout) before the next attempt rather than spin.
        if str(exc) != self._refusal:
            log.warning("taking a job from Redis refused (%s); trying again every 1 s", exc)
            self._refusal = str(exc)
        self._waiting = sent == "fetch"
        if not self._waiting:
            time.sleep(1)  # the wait itself was refused: nothing else paces the retry
        raise Empty() from exc

    def _deliver_fetched(self, key: str, item: bytes, tag: bytes, problem: bytes) -> None:
        chan: Any = self
        queue = key.rsplit(chan.sep, 1)[0]
        chan._queue_cycle.rotate(queue)
        if not tag:  # the script moved it to the quarantine
            self._log_quarantined(queue, item, problem.decode())  # type: ignore[attr-defined]
            return
        self._recorded_tag = tag.decode()
        try:
            self._deliver_recorded(queue, item, self._recorded_tag)  # type: ignore[attr-defined]
        finally:
            self._recorded_tag = None

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        chan: Any = self
        batch = kwargs.get("_publish_batch")
        if chan.global_keyprefix or (batch is None and chan._expires):
            super()._put(queue, message, **kwargs)  # type: ignore[misc]
            if not chan.global_keyprefix:
                self._ring(queue)
            return
        if batch is not None:
            super()._put(queue, message, **kwargs)  # type: ignore[misc]
            batch.add("lpush", WAKE + queue, 1)
            batch.add("ltrim", WAKE + queue, 0, WAKE_CAP - 1)
            return
        key = chan._q_for_pri(queue, chan._get_message_priority(message, reverse=False))
        with chan.conn_or_acquire() as client:
            # One command, not a pipeline of three: a pipeline costs `delay()` about a fifth
            # of its rate in redis-py's own work (benchmarks/RESULTS.md).
            put = self.__dict__.get("_put_script")
            if put is None or put.registered_client is not client:
                put = self.__dict__["_put_script"] = client.register_script(PUT_SCRIPT)
            put(keys=[key, WAKE + queue], args=[dumps(message), WAKE_CAP])

    def _ring(self, queue: str) -> None:
        chan: Any = self
        with chan.conn_or_acquire() as client:
            client.pipeline(transaction=False).lpush(WAKE + queue, 1).ltrim(
                WAKE + queue, 0, WAKE_CAP - 1
            ).execute()
