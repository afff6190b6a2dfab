"""The dead-letter queue: a broker queue named ``dead_letter`` that no worker consumes.

Each entry holds the job id and the full original job, the reason it died
(``permanent``, ``exhausted``, ``invalid`` or ``crashed``; ``emailq.worker.retry``
decides which), the last SMTP reply, every attempt with its time, and the
recipients that did not get the message.
"""

import base64
import json
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from email.utils import getaddresses
from typing import Any

import redis
from celery import Celery
from kombu import Queue

from emailq.core.errors import InvalidEmail
from emailq.core.keys import DEAD_LETTER
from emailq.worker import counters
from emailq.worker.delivery import shared
from emailq.worker.ledger import JobState
from emailq.worker.recorder import recorder

log = logging.getLogger(__name__)

QUEUE = Queue(DEAD_LETTER, routing_key=DEAD_LETTER)
REASONS = ("permanent", "exhausted", "invalid", "crashed", "expired")


def bury(
    app: Celery, job_id: str, job: Any, exc: BaseException | None, *, reason: str,
    traceback: str | None = None, over: bool = True,
) -> None:  # fmt: skip
    """Put the job in the dead-letter queue, one entry per job id, replacing an earlier one.

    ``over=True``: the job is finished, ``dead``, or ``partial`` if someone has it.
    ``over=False``: only some recipients were refused for good; the job goes on (the
    others are being retried, or already have it) and its verdict is recorded elsewhere.
    """
    job = job if isinstance(job, dict) else {"malformed": repr(job)[:2000]}
    ledger = shared().ledger
    state = ledger.state(job_id)
    entry = make_entry(job_id, job, exc, state, reason=reason, traceback=traceback)
    try:
        publish(app, entry)
    except Exception:  # noqa: BLE001 - the broker is gone: the log is the last place left
        log.critical("job %s: dead-letter publish failed; entry: %r", job_id, entry)
        raise
    _drop_older(ledger.redis, job_id)
    if over:
        counters.count(ledger.redis, "dead", reason)
    log.error(
        "job %s dead-lettered (%s): %s; last SMTP reply: %s; see `emailq dlq show %s`",
        job_id, reason, entry["error"], reply_text(entry["smtp_code"], entry["smtp_text"]),
        job_id,
    )  # fmt: skip
    if not over:
        return
    verdict = "partial" if state.delivered else "dead"
    ledger.record(job_id, state, final=verdict)
    track = recorder()
    track.emit(verdict, job_id, job, attempts=len(state.attempts), last_error=entry["error"])


def _drop_older(client: redis.Redis, job_id: str) -> None:
    """Keep only the newest entry for ``job_id``: it lists every refused recipient."""
    for stored in [s for s in read(client) if s.entry.get("job_id") == job_id][:-1]:
        remove(client, stored)


def make_entry(
    job_id: str,
    job: dict[str, Any],
    exc: BaseException | None,
    state: JobState,
    *,
    reason: str,
    traceback: str | None = None,
) -> dict[str, Any]:
    failed = {r: list(reply) for r, reply in state.failed.items()}
    failed.update({r: list(reply) for r, reply in getattr(exc, "recipients", {}).items()})
    if not failed and not isinstance(exc, InvalidEmail):
        delivered = state.delivered
        to = [r for r in _recipients(job) if r not in delivered]
        failed = {r: [getattr(exc, "smtp_code", None), getattr(exc, "smtp_text", None)] for r in to}
    return {
        "job_id": job_id,
        "job": job,
        "reason": reason,
        "error": f"{type(exc).__name__}: {exc}" if exc else None,
        "smtp_code": getattr(exc, "smtp_code", None),
        "smtp_text": getattr(exc, "smtp_text", None),
        "attempts": state.attempts,
        "failed_recipients": failed,
        "delivered_recipients": sorted(state.delivered),
        "traceback": traceback if reason == "crashed" else None,
        "dead_at": time.time(),
    }


def reply_text(code: int | None, text: str | None) -> str:
    """An SMTP reply as an operator reads it; the recipient may have had none."""
    return f"{code or ''} {text or ''}".strip() or "no reply recorded"


def _recipients(job: dict[str, Any]) -> list[str]:
    values = [v for k in ("to", "cc", "bcc") for v in job.get(k) or () if isinstance(v, str)]
    return [addr for _, addr in getaddresses(values) if addr]


def publish(app: Celery, entry: dict[str, Any]) -> None:
    """Put an entry on the dead-letter queue, retrying the broker connection."""
    with app.producer_or_acquire() as producer:
        producer.publish(
            entry,
            exchange="",
            routing_key=QUEUE.name,
            serializer="json",
            declare=[QUEUE],
            delivery_mode=2,
            retry=True,
            retry_policy={"max_retries": 10, "interval_start": 0.5, "interval_step": 1},
        )


@dataclass(frozen=True)
class Stored:
    raw: bytes  # the broker's copy, needed to remove exactly this entry
    entry: dict[str, Any]


def _decode(raw: bytes) -> dict[str, Any]:
    envelope = json.loads(raw)
    body = envelope["body"]
    if envelope.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    return json.loads(body)


def read(client: redis.Redis) -> list[Stored]:
    """Every entry, oldest first (kombu pushes on the left and consumers pop on the right)."""
    return [Stored(raw, _decode(raw)) for raw in reversed(client.lrange(QUEUE.name, 0, -1))]


def find(client: redis.Redis, job_id: str) -> Stored | None:
    matches = [s for s in read(client) if s.entry["job_id"] == job_id]
    return matches[-1] if matches else None


def select(
    stored: list[Stored], *, reasons: Collection[str] = (), batches: Collection[str] = (),
    since: float | None = None,
) -> list[Stored]:  # fmt: skip
    """The entries that pass every filter given; an empty filter passes everything.

    ``reasons``: any of these reasons; ``batches``: any of these bulk batch ids;
    ``since``: dead at or after this time (epoch seconds).
    """

    def matches(entry: dict[str, Any]) -> bool:
        job = entry.get("job") if isinstance(entry.get("job"), dict) else {}
        return (
            (not reasons or entry.get("reason") in reasons)
            and (not batches or job.get("batch_id") in batches)
            and (since is None or float(entry.get("dead_at") or 0) >= since)
        )

    return [s for s in stored if matches(s.entry)]


def remove(client: redis.Redis, stored: Stored) -> bool:
    return bool(client.lrem(QUEUE.name, 1, stored.raw))


def replay(
    client: redis.Redis,
    stored: Stored,
    *,
    reopen: Callable[[str], None],
    enqueue: Callable[[dict[str, Any], str], None],
) -> None:
    """Send a dead job again: same id, its priority, a fresh retry budget.

    The ledger keeps who already has the message, so only the rest are sent to.
    Publish first, then remove: a crash in between leaves a duplicate the ledger skips.
    """
    job_id = stored.entry["job_id"]
    reopen(job_id)
    enqueue(stored.entry["job"], job_id)
    remove(client, stored)


def purge(client: redis.Redis, *, older_than_s: float | None = None) -> int:
    """Remove entries (all, or those dead longer than ``older_than_s``); returns how many."""
    if older_than_s is None:
        count = client.llen(QUEUE.name)
        client.delete(QUEUE.name)
        return count
    cutoff = time.time() - older_than_s
    return sum(remove(client, s) for s in read(client) if s.entry["dead_at"] < cutoff)
