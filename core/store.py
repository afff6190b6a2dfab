"""The process's Redis clients for the service's own keys (ledger, delayed jobs, dead letters).

Workers and the CLI use ``redis_client()``; the producer uses ``producer_client()``, whose
timeouts are short enough for ``delay()`` to answer within 2 s when Redis is unreachable
(the contract). Both have timeouts: without one, a Redis host that stops answering without
closing the connection (a failover, a firewall or NAT dropping it) hangs the caller for
the kernel's TCP retransmission time, about 15 minutes.
"""

import hashlib
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry
from redis.sentinel import Sentinel

from emailq.config import Settings, get_settings

# A Redis that takes two seconds to accept a TCP connection is down, not busy.
CONNECT_TIMEOUT_S = 2.0
# Workers: no command on this client blocks (no BLPOP, WAIT or pub/sub), and the slowest
# (a short Lua script, a LRANGE of the dead letters) take milliseconds; ten seconds rides
# out a Redis stalled on a slow disk (AOF fsync) without failing the job.
SOCKET_TIMEOUT_S = 10.0
# Producer: one connect plus one reply must fit the 2 s budget with room for a second
# step (publishing.DEADLINE_S). A reply carries at most a job's payload, which the body
# and attachment limits keep to a few MiB: a second on any working network.
PRODUCER_CONNECT_TIMEOUT_S = 0.5
PRODUCER_SOCKET_TIMEOUT_S = 1.0

_client: redis.Redis | None = None
_producer: redis.Redis | None = None
_lock = threading.Lock()


def connect(
    settings: Settings,
    *,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    socket_timeout_s: float = SOCKET_TIMEOUT_S,
    **options: Any,
) -> redis.Redis:
    """A client for REDIS_URL; ``sentinel://h1:26379;sentinel://h2:26379`` asks Sentinel."""
    options = {
        "health_check_interval": 30,
        "socket_connect_timeout": connect_timeout_s,
        "socket_timeout": socket_timeout_s,
        "socket_keepalive": True,
        **options,
    }
    if not settings.redis_url.startswith("sentinel://"):
        return redis.Redis.from_url(settings.redis_url, **options)
    parts = [urlparse(u) for u in settings.redis_url.split(";") if u.strip()]
    first = parts[0]
    db = int(first.path.strip("/") or 0)
    # The sentinels themselves get the same timeouts (and retry policy), or asking a dead
    # one for the master would hang before the master's own timeouts ever apply.
    sentinel_kwargs = {k: v for k, v in options.items() if k.startswith("socket_") or k == "retry"}
    if first.password:
        sentinel_kwargs["password"] = first.password
    sentinel = Sentinel(
        [(p.hostname, p.port or 26379) for p in parts], sentinel_kwargs=sentinel_kwargs
    )
    return sentinel.master_for(
        settings.redis_sentinel_master, db=db, password=first.password, **options
    )


def redis_client() -> redis.Redis:
    """One thread-safe client (and connection pool) per process, for workers and the CLI."""
    global _client
    with _lock:
        if _client is None:
            _client = connect(get_settings())
        return _client


def producer_client() -> redis.Redis:
    """The producer's client: it fails within a second instead of waiting for Redis.

    No retries: redis-py already replaces a pooled connection that Redis closed (a restart)
    when it hands it out, so a retry would only spend the caller's 2 s on a host that
    just failed to answer.
    """
    global _producer
    with _lock:
        if _producer is None:
            _producer = connect(
                get_settings(),
                connect_timeout_s=PRODUCER_CONNECT_TIMEOUT_S,
                socket_timeout_s=PRODUCER_SOCKET_TIMEOUT_S,
                retry=Retry(NoBackoff(), 0),
            )
        return _producer


def memory_used_percent(client: redis.Redis) -> float | None:
    """Redis's memory use as a percentage of its maxmemory; None when it has no limit.

    Counted the way Redis decides to refuse writes under ``noeviction``: ``used_memory``
    less the replication and AOF buffers (``mem_not_counted_for_evict``).
    """
    info = client.info("memory")
    limit = int(info.get("maxmemory") or 0)
    if limit <= 0:
        return None
    used = int(info["used_memory"]) - int(info.get("mem_not_counted_for_evict") or 0)
    return 100.0 * max(used, 0) / limit


class ThreadScript:
    """A Lua script called over a connection of the calling thread's own.

    For the scripts a worker runs on every job: redis-py's ``Script`` takes a pooled
    connection per call (a lock, a fork check, a poll for stray data) and wraps the call in
    its retry machinery, which together cost more CPU than the script itself. Here each
    thread keeps one connection of the client's pool kind (same address, auth, timeouts,
    Sentinel discovery), sends ``EVALSHA`` and reads the reply. A connection that fails is
    dropped; a call that fails before Redis answers, on a connection made before (one
    Redis closed while it was idle), is sent once more on a new one.
    """

    def __init__(self, client: redis.Redis, source: str) -> None:
        self.client, self.source = client, source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - Redis's script id
        self._local = threading.local()

    def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        conn = getattr(self._local, "conn", None)
        fresh = conn is None
        if fresh:
            conn = self._local.conn = self.client.connection_pool.make_connection()
        try:
            return self._call_clean(conn, keys, args)
        except redis.ConnectionError:
            if fresh:
                raise
            return self._call_clean(conn, keys, args)  # reconnects

    def _call_clean(self, conn: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return self._call(conn, keys, args)
        except redis.ResponseError:  # the script's own error: the connection is fine
            raise
        except BaseException:
            conn.disconnect()  # a timeout leaves a reply on its way: never read it next call
            raise

    def _call(self, conn: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        conn.send_command("EVALSHA", self.sha, len(keys), *keys, *args)
        try:
            return conn.read_response()
        except NoScriptError:  # Redis restarted, or its script cache was flushed
            conn.send_command("EVAL", self.source, len(keys), *keys, *args)
            return conn.read_response()
