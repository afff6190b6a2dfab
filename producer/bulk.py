"""``enqueue_bulk``: one template, many personalised recipients, one batch id."""

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis
from celery.utils import uuid

from emailq.config import get_settings
from emailq.core import events, store
from emailq.core.errors import BrokerUnavailable, InvalidEmail
from emailq.core.job import CHUNK_SIZE, EmailJob, chunk_item, stamped
from emailq.core.keys import BATCH
from emailq.core.validation import validate_job
from emailq.producer.publishing import (
    bound_to_deadline,
    ensure_room,
    unreachable_as_broker_unavailable,
)
from emailq.producer.tasks import send_many

log = logging.getLogger(__name__)

BATCH_TTL_S = 30 * 24 * 3600
PUBLISH_BATCH = 100  # task messages per Redis pipeline: one round trip each


class InvalidBatch(InvalidEmail):
    """Some recipients of a bulk send were refused; nothing was published."""

    def __init__(self, invalid: dict[int, str]) -> None:
        self.invalid = invalid
        shown = "; ".join(f"recipients[{i}] {why}" for i, why in list(invalid.items())[:5])
        more = f" (and {len(invalid) - 5} more)" if len(invalid) > 5 else ""
        super().__init__(f"{len(invalid)} invalid recipient(s): {shown}{more}")


class BatchId(str):
    """The batch id, carrying the job ids published and the recipients skipped as invalid."""

    job_ids: list[str]
    skipped: dict[int, str]


def _validate(
    template: str, recipients: Iterable[Any], common: dict[str, Any], batch_id: str
) -> tuple[list[EmailJob], dict[int, str]]:
    settings = get_settings()
    jobs: list[EmailJob] = []
    invalid: dict[int, str] = {}
    for i, recipient in enumerate(recipients):
        try:
            if not isinstance(recipient, Mapping) or "to" not in recipient:
                raise InvalidEmail("needs a mapping with 'to' (and optionally 'context')")
            if unknown := set(recipient) - {"to", "context"}:
                raise InvalidEmail(f"unknown key(s) {sorted(unknown)}")
            kwargs = {**common, "to": recipient["to"], "template": template,
                      "context": recipient.get("context") or {}, "batch_id": batch_id}  # fmt: skip
            jobs.append(stamped(validate_job(kwargs, settings, read_files=True)))
        except InvalidEmail as exc:
            to = recipient.get("to") if isinstance(recipient, Mapping) else recipient
            invalid[i] = f"{to!r}: {exc}"
    return jobs, invalid


def _record_queued(client: redis.Redis, job_ids: list[str], jobs: list[EmailJob]) -> None:
    """The jobs' "queued" events; logged, not raised, when Redis fails: the jobs are queued."""
    pairs = zip(job_ids, jobs, strict=True)
    queued = [events.event("queued", job_id, job.tracking_info()) for job_id, job in pairs]
    try:
        pipe = client.pipeline(transaction=False)
        for start in range(0, len(queued), PUBLISH_BATCH):
            events.push(pipe, queued[start : start + PUBLISH_BATCH])
        pipe.execute()
    except (redis.exceptions.RedisError, OSError) as exc:
        log.warning("%d jobs were queued, but their tracking events were not recorded: %s",
                    len(queued), exc)  # fmt: skip


def enqueue_bulk(
    template: str,
    recipients: Iterable[Mapping[str, Any]],
    priority: str = "normal",
    *,
    skip_invalid: bool = False,
    **common: Any,
) -> BatchId:
    """Validate every recipient, then publish them all; returns the batch id.

    With ``skip_invalid=False`` (the default) one invalid recipient refuses the whole
    batch with ``InvalidBatch``, which lists them all, and nothing is published. With
    ``skip_invalid=True`` the valid ones are sent and ``BatchId.skipped`` names the rest.
    ``common`` holds keywords shared by every message (``subject``, ``attachments``...).

    A Redis that cannot be reached raises ``BrokerUnavailable`` within 2 s, and one that
    is nearly full ``QueueFull``, before any job is published. Should Redis stop answering
    part-way through a large batch, the error's message says how many jobs were queued.
    """
    batch_id = uuid()
    jobs, invalid = _validate(template, recipients, {**common, "priority": priority}, batch_id)
    if invalid and not skip_invalid:
        raise InvalidBatch(invalid)
    app = send_many.app
    bound_to_deadline(app)
    client = store.producer_client()
    with unreachable_as_broker_unavailable():
        ensure_room()
        pipe = client.pipeline(transaction=False)  # one round trip for the batch's record
        pipe.hset(
            BATCH + batch_id,
            mapping={"total": len(jobs), "skipped": len(invalid), "created_at": time.time()},
        )
        pipe.expire(BATCH + batch_id, BATCH_TTL_S)
        pipe.execute()
    job_ids = [uuid() for _ in jobs]
    # Jobs travel in chunks (one task per ``CHUNK_SIZE`` jobs, each job keeping its id),
    # and kombu's publish batch pipelines the chunks' LPUSHes.
    entries = [chunk_item(job_id, job) for job_id, job in zip(job_ids, jobs, strict=True)]
    chunked = [entries[i : i + CHUNK_SIZE] for i in range(0, len(entries), CHUNK_SIZE)]
    queued_jobs = 0  # jobs in publish batches Redis has acknowledged
    try:
        with unreachable_as_broker_unavailable(), app.producer_or_acquire() as producer:
            for start in range(0, len(chunked), PUBLISH_BATCH):
                with producer.batch(max_size=PUBLISH_BATCH):
                    for chunk in chunked[start : start + PUBLISH_BATCH]:
                        send_many.apply_async(
                            kwargs={"jobs": chunk}, queue=priority, producer=producer,
                            kwargsrepr=repr({"batch_id": batch_id, "jobs": len(chunk)}),
                        )  # fmt: skip
                queued_jobs += sum(len(c) for c in chunked[start : start + PUBLISH_BATCH])
    except BrokerUnavailable as exc:
        if not queued_jobs:
            raise
        # Those jobs will be sent: the caller must not simply send the whole batch again.
        raise BrokerUnavailable(
            f"Redis stopped answering part-way through batch {batch_id}: at least "
            f"{queued_jobs} of {len(jobs)} jobs were queued and will be sent, the rest were "
            f"not (`emailq batch {batch_id}` counts them)"
        ) from exc
    _record_queued(client, job_ids, jobs)
    result = BatchId(batch_id)
    result.job_ids = job_ids
    result.skipped = invalid
    return result
