"""Global send limits per SMTP account, shared by every worker through Redis (limits library).

Celery's own ``rate_limit`` counts per worker process; a provider counts per account.
A job over the limit is not a failure: the task defers it until the window allows.
"""

import time

from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from emailq.config import Settings


class RateLimiter:
    """``acquire(cost)`` takes ``cost`` recipients from every limit, or says how long to wait."""

    def __init__(self, spec: str, *, storage_url: str, account: str) -> None:
        self.limits: list[RateLimitItem] = parse_many(spec)
        self.strategy = MovingWindowRateLimiter(storage_from_string(storage_url))
        self.account = account

    def acquire(self, cost: int = 1) -> float | None:
        """None when allowed (the cost is taken), else the seconds until it could be."""
        for limit in self.limits:
            if not self.strategy.test(limit, self.account, cost=cost):
                return self._wait(limit)
        for limit in self.limits:
            if not self.strategy.hit(limit, self.account, cost=cost):
                return self._wait(limit)  # another worker took the room between test and hit
        return None

    def _wait(self, limit: RateLimitItem) -> float:
        reset = self.strategy.get_window_stats(limit, self.account).reset_time
        return max(0.5, reset - time.time())


def limiter_for(settings: Settings) -> RateLimiter | None:
    spec = settings.rate_limit
    if not spec:
        return None
    url = settings.redis_url
    if url.startswith("sentinel://"):  # limits' own Sentinel form: redis+sentinel://h1,h2/master
        hosts = ",".join(u.split("://", 1)[1].split("/")[0] for u in url.split(";"))
        url = f"redis+sentinel://{hosts}/{settings.redis_sentinel_master}"
    account = f"{settings.smtp_server}:{settings.login or settings.sender.addr_spec}"
    return RateLimiter(spec, storage_url=url, account=account)
