"""Tracking retention: jobs unchanged for longer than ``TRACKING_RETENTION_DAYS`` are deleted.

A job goes with its attempts. Deletes run in small batches, each its own short
transaction, so workers recording deliveries meanwhile wait at most one batch
(SQLite has a single writer; PostgreSQL locks only the rows of the batch).
"""

import time

from sqlalchemy import Engine, and_, func, select

from emailq.worker.tracking import attempts, jobs

BATCH = 500  # jobs per transaction: short locks, and within SQLite's 999 bound parameters
DAY_S = 86400


def _stale(cutoff: float):
    # created_at is indexed and never later than updated_at: it narrows the scan, and
    # updated_at keeps a job replayed or retried since then.
    return and_(jobs.c.created_at < cutoff, jobs.c.updated_at < cutoff)


def cutoff_for(days: float, *, now: float | None = None) -> float:
    """The epoch time before which a job's last change makes it prunable."""
    return (time.time() if now is None else now) - days * DAY_S


def count_stale(engine: Engine, *, days: float, now: float | None = None) -> int:
    """How many jobs ``prune`` would delete now; 0 when ``days`` is 0 (keep for ever)."""
    if days <= 0:
        return 0
    query = select(func.count()).select_from(jobs).where(_stale(cutoff_for(days, now=now)))
    with engine.connect() as conn:
        return conn.execute(query).scalar_one()


def prune(engine: Engine, *, days: float, now: float | None = None, batch: int = BATCH) -> int:
    """Delete jobs whose last change is older than ``days``, with their attempts.

    Returns how many jobs were deleted. ``days`` 0 keeps everything.
    """
    if days <= 0:
        return 0
    cutoff = cutoff_for(days, now=now)
    deleted = 0
    while True:
        with engine.begin() as conn:
            chosen = select(jobs.c.id).where(_stale(cutoff)).limit(batch)
            # The condition is repeated outside the subquery: a job a worker touched since
            # it was chosen is re-checked by the DELETE and kept (PostgreSQL re-reads it).
            gone = conn.execute(
                jobs.delete()
                .where(jobs.c.id.in_(chosen), _stale(cutoff))
                .returning(jobs.c.id)
            ).scalars().all()  # fmt: skip
            if gone:
                conn.execute(attempts.delete().where(attempts.c.job_id.in_(gone)))
        deleted += len(gone)
        if len(gone) < batch:
            return deleted
