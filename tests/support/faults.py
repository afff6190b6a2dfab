"""Shared settings and waits for the fault tests."""

import time

import redis

from emailq.worker import deadletter

# Backoff of 1 s doubling, without jitter, so a retry schedule is predictable in a test.
FAST_RETRIES = {
    "RETRY_BACKOFF_BASE_S": "1",
    "RETRY_BACKOFF_MAX_S": "8",
    "RETRY_JITTER": "false",
    "MAX_RETRIES": "4",
}


def dead_letters(client: redis.Redis, timeout: float = 30.0, count: int = 1) -> list[dict]:
    """Wait until the dead-letter queue holds ``count`` entries; returns them, oldest first."""
    deadline = time.monotonic() + timeout
    entries: list[dict] = []
    while time.monotonic() < deadline:
        entries = [s.entry for s in deadletter.read(client)]
        if len(entries) >= count:
            return entries
        time.sleep(0.1)
    raise TimeoutError(f"{len(entries)} of {count} dead letters after {timeout}s")
