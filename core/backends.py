"""Celery's Redis transport and result backend, without two costs per ``delay()``.

- kombu's Redis channel builds a new ``redis.Redis`` object (and its table of ~170 reply
  callbacks) for every message it publishes, which costs more CPU than the LPUSH itself.
  These channels keep one: redis-py clients are thread-safe and share the channel's pool.
- Celery's Redis result backend SUBSCRIBEs to every job's result channel as it is
  published, and UNSUBSCRIBEs when the ``AsyncResult`` is collected: two round trips for
  results that are rarely awaited. ``AsyncResult.get()`` still subscribes when called, and
  then reads the stored result, so a job that finished before ``get()`` is still found.
"""

from celery.backends import redis as celery_redis
from kombu.transport import redis as kombu_redis


class _ReusedClient:
    def _create_client(self, asynchronous: bool = False):  # noqa: ANN202 - kombu's signature
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        client = self.__dict__.get("_sync_client")
        if client is None or client.connection_pool is not self.pool:  # type: ignore[attr-defined]
            client = self.__dict__["_sync_client"] = super()._create_client()  # type: ignore[misc]
        return client


class Channel(_ReusedClient, kombu_redis.Channel):
    pass


class SentinelChannel(_ReusedClient, kombu_redis.SentinelChannel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


class _SubscribeOnGet:
    def on_task_call(self, producer, task_id) -> None:  # noqa: ANN001 - Celery's signature
        """Nothing at publish time: ``get()`` subscribes when a caller waits."""


class RedisBackend(_SubscribeOnGet, celery_redis.RedisBackend):
    pass


class SentinelBackend(_SubscribeOnGet, celery_redis.SentinelBackend):
    pass


def result_backend_url(url: str) -> str:
    """``result_backend`` naming these classes, in Celery's ``module:Class+url`` form."""
    cls = "SentinelBackend" if url.startswith("sentinel://") else "RedisBackend"
    return f"{__name__}:{cls}+{url}"
