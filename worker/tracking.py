"""The delivery tracking store: one row per job, one per attempt (SQLAlchemy 2 Core).

SQLite in ``EMAILQ_DATA_DIR`` by default, in WAL mode so several worker processes on one
host can write; PostgreSQL through ``DATABASE_URL`` for several hosts. Writes come
from a ``Recorder`` in batches, never from the sending path itself.
"""

import time
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    event,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

# partial: some recipients have the message, the others were refused for good.
STATUSES = ("queued", "sending", "retrying", "sent", "partial", "dead")
FINAL = ("sent", "partial", "dead")

metadata = MetaData()
jobs = Table(
    "emailq_jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("recipients", JSON, nullable=False),
    Column("subject", Text, nullable=False),
    Column("priority", String(16), nullable=False),
    Column("idempotency_key", String(200)),
    Column("batch_id", String(64), index=True),
    Column("status", String(16), nullable=False, index=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("created_at", Float, nullable=False, index=True),
    Column("sent_at", Float),
    Column("updated_at", Float, nullable=False),
)
attempts = Table(
    "emailq_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(64), nullable=False, index=True),
    Column("at", Float, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("smtp_code", Integer),
    Column("smtp_text", Text),
    Column("recipients", JSON, nullable=False),
)
SCHEMA_LOCK = 0x656D61696C71  # any constant shared by every process: "emailq"


def engine_for(url: str) -> Engine:
    """An engine for DATABASE_URL; ``postgresql://`` means psycopg 3, SQLite runs in WAL mode."""
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; fsync per checkpoint
            cursor.execute("PRAGMA busy_timeout=30000")  # wait for another process's write
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def ensure_schema(engine: Engine) -> None:
    """Create the tables; safe when many processes start at the same moment."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Concurrent CREATE TABLE IF NOT EXISTS can still collide in the catalog.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
        elif engine.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # one writer at a time, others wait
        metadata.create_all(conn, checkfirst=True)


class TrackingStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
        # One statement per kind, built once: each build makes a new "excluded" alias of
        # the table, with a proxy for every column, for every batch.
        self._upserts: dict[str, Any] = {}

    def apply(self, events: list[dict[str, Any]]) -> None:
        """Write a batch of events in one transaction, a statement per kind."""
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for e in _without_superseded(events):
            by_kind.setdefault(e["kind"], []).append(e)
        with self.engine.begin() as conn:
            for kind, batch in by_kind.items():
                if kind == "attempt":
                    conn.execute(attempts.insert(), [_attempt_row(e) for e in batch])
                else:
                    stmt = self._upserts.get(kind)
                    if stmt is None:
                        stmt = self._upserts[kind] = self._upsert(kind)
                    conn.execute(stmt, [_job_row(e) for e in batch])

    def _upsert(self, kind: str):
        stmt = self._insert(jobs)
        new = stmt.excluded
        if kind == "queued":
            # A "queued" never rewinds a job: it reaches the store through Redis and can
            # arrive after the worker's own events. It only corrects the creation time.
            earliest = func.least if self.engine.dialect.name == "postgresql" else func.min
            return stmt.on_conflict_do_update(
                index_elements=[jobs.c.id],
                set_={"created_at": earliest(jobs.c.created_at, new.created_at)},
            )
        changes = {"status": new.status, "updated_at": new.updated_at}
        where = None
        if kind == "requeued":  # a replay reopens a dead job, unless a worker is already on it
            changes.update(attempts=new.attempts, last_error=new.last_error)
            where = jobs.c.updated_at <= new.updated_at
        elif kind in ("sending", "retrying"):
            changes.update(attempts=new.attempts, last_error=new.last_error)
            # Events from different processes can arrive out of order; a final status stays.
            # (Literal SQL: executemany cannot expand an IN list of bound parameters.)
            not_final = and_(*(jobs.c.status != literal_column(f"'{s}'") for s in FINAL))
            where = not_final & (jobs.c.updated_at <= new.updated_at)
        elif kind in ("sent", "partial"):
            changes.update(attempts=new.attempts, sent_at=new.sent_at)
        elif kind == "dead":
            changes.update(attempts=new.attempts, last_error=new.last_error)
        return stmt.on_conflict_do_update(index_elements=[jobs.c.id], set_=changes, where=where)

    def job(self, job_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
            if row is None:
                return None
            tries = conn.execute(
                select(attempts).where(attempts.c.job_id == job_id).order_by(attempts.c.at)
            ).mappings()
            return {**row, "history": [dict(a) for a in tries]}

    def stats(self, *, days: float) -> dict[str, int]:
        since = time.time() - days * 86400
        query = (
            select(jobs.c.status, func.count())
            .where(jobs.c.created_at >= since)
            .group_by(jobs.c.status)
        )
        with self.engine.connect() as conn:
            counts = dict(conn.execute(query).all())
        return {status: counts.get(status, 0) for status in STATUSES}

    def batch(self, batch_id: str) -> dict[str, int]:
        query = (
            select(jobs.c.status, func.count())
            .where(jobs.c.batch_id == batch_id)
            .group_by(jobs.c.status)
        )
        with self.engine.connect() as conn:
            counts = dict(conn.execute(query).all())
        return {status: counts.get(status, 0) for status in STATUSES}

    def failed(self, *, limit: int) -> list[dict[str, Any]]:
        query = (
            select(jobs)
            .where(jobs.c.status == "dead")
            .order_by(jobs.c.updated_at.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(select(func.count()).select_from(jobs))


def _without_superseded(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop a "sending" that a later "sent", "retrying" or "dead" of the same job replaces.

    At full speed most jobs start and finish within one batch: one status write per
    job instead of two keeps the writer ahead of the senders.
    """
    settled: set[str] = set()
    kept: list[dict[str, Any]] = []
    for e in reversed(events):
        if e["kind"] in ("sent", "partial", "retrying", "dead"):
            settled.add(e["job_id"])
        elif e["kind"] == "sending" and e["job_id"] in settled:
            continue
        kept.append(e)
    kept.reverse()
    return kept


def _job_row(e: dict[str, Any]) -> dict[str, Any]:
    status = "queued" if e["kind"] == "requeued" else e["kind"]
    return {
        "id": e["job_id"],
        "recipients": e.get("recipients", []),
        "subject": e.get("subject", ""),
        "priority": e.get("priority", "normal"),
        "idempotency_key": e.get("idempotency_key"),
        "batch_id": e.get("batch_id"),
        "status": status,
        "attempts": e.get("attempts", 0),
        "last_error": e.get("last_error"),
        "created_at": e["at"],
        "sent_at": e["at"] if status in ("sent", "partial") else None,
        "updated_at": e["at"],
    }


def _attempt_row(e: dict[str, Any]) -> dict[str, Any]:
    return {
        "job_id": e["job_id"],
        "at": e["at"],
        "outcome": e["outcome"],
        "smtp_code": e.get("smtp_code"),
        "smtp_text": e.get("smtp_text"),
        "recipients": e.get("recipients", []),
    }
