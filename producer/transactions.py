"""Queue an email when a SQLAlchemy session's transaction commits, and not if it rolls back.

An email about a row ("order 42 has shipped") published before the row commits can go
out for an order that was then rolled back, or reach a worker that looks the row up
before it exists. ``enqueue_after_commit(session, to=..., ...)`` validates at once (bad
input raises ``InvalidEmail`` at the call, inside the transaction) and publishes when the
session's outermost transaction commits. A rollback of that transaction, or of the
savepoint the call was made in, drops the job; so does closing the session uncommitted.

Django applications use ``enqueue_email.delay_on_commit(...)`` instead.

SQLAlchemy is imported on first use only: ``import emailq`` never loads it.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery.utils import uuid

from emailq.core.job import EmailJob
from emailq.producer.tasks import enqueue_email

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session, SessionTransaction, scoped_session

WAITING = "emailq.after_commit"  # session.info: the jobs waiting for the session's commit
_COMMITTED = "emailq.committed"  # session.info: the outermost transaction that just committed


@dataclass(eq=False)
class _Waiting:
    transaction: "SessionTransaction"  # the innermost one when the job was queued
    job: EmailJob
    task_id: str
    options: dict[str, Any] = field(default_factory=dict)


def enqueue_after_commit(
    session: "Session | scoped_session[Any] | AsyncSession",
    /,
    *,
    options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> str:
    """Validate now, publish when ``session`` commits; returns the job id it will have.

    ``kwargs`` are ``enqueue_email.delay``'s; ``options`` are ``apply_async``'s
    (``countdown``, ``eta``, ``expires``). A ``BrokerUnavailable`` at commit comes out of
    ``session.commit()`` after the database commit, which stands: queue those emails
    again (an ``idempotency_key`` makes that safe). With an ``idempotency_key`` already
    taken, the job that runs is the first one, not the id returned here.
    """
    from sqlalchemy import event

    job = enqueue_email.validate(None, kwargs)
    session = _plain(session)
    transaction = session.get_nested_transaction() or session.get_transaction() or session.begin()
    waiting: list[_Waiting] | None = session.info.get(WAITING)
    if waiting is None:  # one set of listeners per session, however many jobs it queues
        waiting = session.info[WAITING] = []
        event.listen(session, "after_commit", _committed)
        event.listen(session, "after_soft_rollback", _rolled_back)
        event.listen(session, "after_transaction_end", _ended)
    chosen = dict(options or {})
    task_id = chosen.pop("task_id", None) or uuid()
    waiting.append(_Waiting(transaction, job, task_id, chosen))
    return task_id


def _plain(session: Any) -> "Session":
    from sqlalchemy.orm import Session, scoped_session

    if isinstance(session, scoped_session):
        session = session()  # this thread's session, not every session of the factory
    session = getattr(session, "sync_session", session)  # an AsyncSession runs a Session
    if not isinstance(session, Session):
        raise TypeError(f"enqueue_after_commit needs a SQLAlchemy Session, not {session!r}")
    return session


def _lineage(transaction: "SessionTransaction | None") -> list["SessionTransaction"]:
    """``transaction`` and the transactions it is nested in, innermost first."""
    found = []
    while transaction is not None:
        found.append(transaction)
        transaction = transaction.parent
    return found


def _committed(session: "Session") -> None:
    # Also called when a savepoint is released; the outer transaction is still active
    # then, and may yet roll back.
    outermost = session.get_transaction()
    if outermost is not None and not outermost.is_active:
        session.info[_COMMITTED] = outermost


def _rolled_back(session: "Session", previous_transaction: "SessionTransaction") -> None:
    waiting = session.info.get(WAITING, [])
    waiting[:] = [w for w in waiting if previous_transaction not in _lineage(w.transaction)]


def _ended(session: "Session", transaction: "SessionTransaction") -> None:
    """Publish once the outermost transaction has committed and closed.

    Not in ``after_commit``: an exception raised there leaves the session stuck in its
    committed transaction, while here the session is already clean for its next use.
    """
    if transaction.parent is not None:
        return
    waiting = session.info.get(WAITING, [])
    ours = [w for w in waiting if _lineage(w.transaction)[-1] is transaction]
    waiting[:] = [w for w in waiting if w not in ours]
    if session.info.pop(_COMMITTED, None) is not transaction:
        return  # closed or rolled back without a commit: the jobs go with it
    for done, item in enumerate(ours):
        try:
            enqueue_email.publish(item.job, task_id=item.task_id, **item.options)
        except BaseException as exc:
            unsent = [w.task_id for w in ours[done:]]
            exc.add_note(
                f"the database transaction was committed; {len(unsent)} email(s) queued to "
                f"go out with it were not published (job ids {', '.join(unsent)})"
            )
            raise
