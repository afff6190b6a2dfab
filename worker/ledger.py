"""Per-job delivery state in Redis: who already has the message, who refused it, every attempt.

A redelivered or retried job consults this before sending, so a recipient the
server accepted is never sent the message again. One hash per job, plus a lock
that keeps two workers from delivering the same job at the same moment (Redis
hands a job to a second worker once the visibility timeout passes).
"""

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from emailq.core.keys import COUNTERS, JOB
from emailq.core.store import ThreadScript
from emailq.worker.locks import LOCK_TTL_S, Renewer

log = logging.getLogger(__name__)

# Longer than any retry schedule or dead-letter replay window: forgetting a job's
# delivered recipients is what would let a late replay send twice.
STATE_TTL_S = 30 * 24 * 3600
PREFIX = JOB
RETRY_WRITES_S = 0.5  # how often unwritten outcomes are tried again while Redis is away

# Take the lock; only a taker counts as a start. Returns {locked, HGETALL of the state}.
# A script is not rolled back when a command in it fails: if the state cannot be read
# (a key of the wrong type), the lock just taken is let go before the error is returned.
_BEGIN = """
local locked = redis.call('set', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[2])
if locked then
  local started = redis.pcall('hincrby', KEYS[1], 'starts', 1)
  if type(started) == 'table' and started.err then
    redis.call('del', KEYS[2])
    return started
  end
  redis.call('expire', KEYS[1], ARGV[3])
  return {1, redis.call('hgetall', KEYS[1]), 0}
end
return {0, redis.call('hgetall', KEYS[1]), redis.call('pttl', KEYS[2])}
"""

# An attempt's outcome in one round trip: the fields (ARGV[7] on, in pairs), the lock let go
# if this worker still holds it (ARGV[1], '' for none), then the outcome counter (ARGV[3],
# '' for none). The counter is a side note: a failure there never fails the record.
# With KEYS[4..6], the job is also over for Celery (``emailq.worker.completion``): its
# result (ARGV[4], kept ARGV[5] s, '' for ever) stored and published under KEYS[4], and
# its delivery tag (ARGV[6]) taken out of kombu's unacked index and hash (KEYS[5], KEYS[6]).
_RECORD = """
local n = #ARGV
local i = 7
while i <= n do
  local j = math.min(i + 999, n)
  redis.call('hset', KEYS[1], unpack(ARGV, i, j))
  i = j + 1
end
if n >= 7 then redis.call('expire', KEYS[1], ARGV[2]) end
if ARGV[1] ~= '' and redis.call('get', KEYS[2]) == ARGV[1] then redis.call('del', KEYS[2]) end
if ARGV[3] ~= '' then redis.pcall('hincrby', KEYS[3], ARGV[3], 1) end
if #KEYS == 6 then
  if ARGV[5] ~= '' then
    redis.call('set', KEYS[4], ARGV[4], 'EX', ARGV[5])
  else
    redis.call('set', KEYS[4], ARGV[4])
  end
  redis.call('publish', KEYS[4], ARGV[4])
  redis.call('zrem', KEYS[5], ARGV[6])
  redis.call('hdel', KEYS[6], ARGV[6])
end
return 1
"""

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Also:
    """A job's Celery bookkeeping for ``Ledger.record`` to write with it: three keys (the
    result, kombu's unacked index and hash) and three values (the result, its time to
    live in s or '', the delivery tag)."""

    keys: tuple[str | bytes, str, str]
    args: tuple[str, int | str, str]


@dataclass
class JobState:
    delivered: set[str] = field(default_factory=set)
    failed: dict[str, tuple[int, str]] = field(default_factory=dict)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    final: str | None = None  # "sent" or "dead" once the job is over
    starts: int = 0  # executions begun, including ones whose worker died
    locked_for_s: float = 0.0  # left on another worker's lock, when ``begin`` found one

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> "JobState":
        state = cls()
        for key, value in raw.items():
            name = key.decode()
            if name.startswith("d:"):
                state.delivered.add(name[2:])
            elif name.startswith("f:"):
                code, text = json.loads(value)
                state.failed[name[2:]] = (code, text)
            elif name == "attempts":
                state.attempts = json.loads(value)
            elif name == "final":
                state.final = value.decode()
            elif name == "starts":
                state.starts = int(value)
        return state

    @property
    def unrecorded_starts(self) -> int:
        """Executions that ended without recording an attempt: the worker died mid-job."""
        return self.starts - len(self.attempts)


class Ledger:
    """The ledger, and the outcomes this process owes it.

    An outcome that cannot be written (Redis went away after the server took the
    message) is kept in memory and written as soon as Redis answers, by a background
    thread, and in any case before this process takes the job again.
    """

    def __init__(self, client: redis.Redis, *, renewer: Renewer | None = None) -> None:
        self.redis = client
        self.renewer = renewer
        self._begin = ThreadScript(client, _BEGIN)  # on every job: the lean call
        self._release = client.register_script(_RELEASE)
        self._record = ThreadScript(client, _RECORD)
        self._unwritten: dict[str, list[Callable[[], Any]]] = {}
        self._writing = threading.Lock()  # one flush at a time: writes stay in order
        self._writer: threading.Thread | None = None

    def begin(
        self, job_id: str, *, lock_ttl_s: float = LOCK_TTL_S, hold_s: float | None = None
    ) -> tuple[str | None, JobState]:
        """Take the job's lock and read its state in one round trip. Token is None if busy.

        With a renewer, the lock is kept alive for up to ``hold_s`` while the job runs.
        """
        if job_id in self._unwritten:
            self.flush(job_id)  # raises while Redis is away: the job waits for it
        token = uuid.uuid4().hex
        key = PREFIX + job_id
        locked, flat, left_ms = self._begin(
            keys=[key, key + ":lock"], args=[token, int(lock_ttl_s), STATE_TTL_S]
        )
        state = JobState.from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))
        if not locked:
            state.locked_for_s = max(0, left_ms) / 1000  # -1: the lock just expired
            return None, state
        if self.renewer is not None and hold_s is not None:
            self.renewer.hold(key + ":lock", token, for_s=hold_s)
        return token, state

    def record(
        self,
        job_id: str,
        state: JobState,
        *,
        delivered: list[str] = (),  # type: ignore[assignment]
        failed: dict[str, tuple[int, str]] | None = None,
        attempt: dict[str, Any] | None = None,
        final: str | None = None,
        token: str | None = None,
        count: str | None = None,
        also: Also | None = None,
    ) -> None:
        """Write an attempt's outcome, release the lock and count it, in one round trip.

        ``count`` names the outcome counter (``emailq.worker.counters``) to add one to.
        ``also`` ends the job for Celery in the same script (see ``_RECORD``); it is
        written with this first attempt only, never with an outcome kept for later.
        Raises ``redis.RedisError`` if Redis is away; the outcome is then kept and
        written once it answers (``flush``).
        """
        key = PREFIX + job_id
        fields: list[str] = []
        for rcpt in delivered:
            fields += (f"d:{rcpt}", "1")
        for rcpt, reply in (failed or {}).items():
            fields += (f"f:{rcpt}", json.dumps(list(reply)))
        if attempt is not None:
            state.attempts.append({"at": time.time(), **attempt})
            fields += ("attempts", json.dumps(state.attempts))
        if final is not None:
            fields += ("final", final)
        state.delivered.update(delivered)
        state.failed.update(failed or {})
        keys = [key, key + ":lock", COUNTERS]
        args = [token or "", STATE_TTL_S, count or "", "", "", "", *fields]

        def write() -> None:
            self._record(keys=keys, args=args)

        try:
            if job_id in self._unwritten:  # earlier outcomes first, in order
                with self._writing:
                    self._unwritten.setdefault(job_id, []).append(write)
                self.flush(job_id)
            else:  # the usual case: no lock shared between threads, one round trip
                if also is None:
                    write()
                else:
                    keys_also, args_also = [*keys, *also.keys], [*args[:3], *also.args, *fields]
                    self._record(keys=keys_also, args=args_also)
                if token is not None:
                    self._let_go(job_id)
        except redis.RedisError:
            with self._writing:
                owed = self._unwritten.setdefault(job_id, [])
                if write not in owed:
                    owed.append(write)
            log.error("job %s: outcome not written, Redis is away; kept until it answers", job_id)
            self._start_writer()
            raise

    def flush(self, job_id: str | None = None) -> None:
        """Write the outcomes still owed (one job's, or all), oldest first."""
        with self._writing:
            for jid in [job_id] if job_id is not None else list(self._unwritten):
                writes = self._unwritten.get(jid, [])
                while writes:
                    writes[0]()  # idempotent: a write that did land is harmless again
                    writes.pop(0)
                self._unwritten.pop(jid, None)
                if self.renewer is not None:
                    self.renewer.drop(PREFIX + jid + ":lock")

    def unwritten(self) -> list[str]:
        with self._writing:
            return list(self._unwritten)

    def _start_writer(self) -> None:
        with self._writing:
            if self._writer is not None and self._writer.is_alive():
                return
            self._writer = threading.Thread(target=self._write_owed, name="emailq-ledger")
            self._writer.daemon = True
            self._writer.start()

    def _write_owed(self) -> None:
        while self.unwritten():
            try:
                self.flush()
                log.warning("outcomes kept while Redis was away are written")
            except redis.RedisError:
                time.sleep(RETRY_WRITES_S)

    def defer(self, job_id: str, token: str) -> None:
        """Give the job back untouched: release the lock and uncount this start."""
        key = PREFIX + job_id
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrby(key, "starts", -1)
        self._release(keys=[key + ":lock"], args=[token], client=pipe)
        pipe.execute()
        self._let_go(job_id)

    def release(self, job_id: str, token: str) -> None:
        self._let_go(job_id)
        self._release(keys=[PREFIX + job_id + ":lock"], args=[token])

    def _let_go(self, job_id: str) -> None:
        if self.renewer is not None:
            self.renewer.drop(PREFIX + job_id + ":lock")

    def state(self, job_id: str) -> JobState:
        return JobState.from_hash(self.redis.hgetall(PREFIX + job_id))

    def reopen(self, job_id: str) -> None:
        """Before a replay: forget refusals, attempts and the verdict; keep who has the message."""
        key = PREFIX + job_id
        fields = [k for k in self.redis.hkeys(key) if not k.startswith(b"d:")]
        if fields:
            self.redis.hdel(key, *fields)
