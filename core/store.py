"""The process's Redis client for the service's own keys (ledger, delayed jobs, dead letters)."""

import threading
from urllib.parse import urlparse

import redis
from redis.sentinel import Sentinel

from emailq.config import Settings, get_settings

_client: redis.Redis | None = None
_lock = threading.Lock()


def connect(settings: Settings) -> redis.Redis:
    """A client for REDIS_URL; ``sentinel://h1:26379;sentinel://h2:26379`` asks Sentinel."""
    if not settings.redis_url.startswith("sentinel://"):
        return redis.Redis.from_url(settings.redis_url, health_check_interval=30)
    parts = [urlparse(u) for u in settings.redis_url.split(";") if u.strip()]
    first = parts[0]
    db = int(first.path.strip("/") or 0)
    sentinel = Sentinel(
        [(p.hostname, p.port or 26379) for p in parts],
        sentinel_kwargs={"password": first.password} if first.password else None,
    )
    return sentinel.master_for(
        settings.redis_sentinel_master, db=db, password=first.password, health_check_interval=30
    )


def redis_client() -> redis.Redis:
    """One thread-safe client (and connection pool) per process."""
    global _client
    with _lock:
        if _client is None:
            _client = connect(get_settings())
        return _client
