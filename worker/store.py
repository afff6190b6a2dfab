"""The process's Redis client for the service's own keys (ledger, delayed jobs, dead letters)."""

import threading

import redis

from config import get_settings

_client: redis.Redis | None = None
_lock = threading.Lock()


def redis_client() -> redis.Redis:
    """One thread-safe client (and connection pool) per process, on REDIS_URL."""
    global _client
    with _lock:
        if _client is None:
            _client = redis.Redis.from_url(get_settings().redis_url, health_check_interval=30)
        return _client
