"""Deliver one job in three steps: send to whoever still needs it, judge the outcome, record it.

No Celery in here: the task turns what this raises into a retry, a deferral or a
dead letter (``emailq.worker.retry``). The judging is pure, in ``emailq.worker.outcome``.
"""

import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from emailq.config import Settings, get_settings
from emailq.core.errors import JobBusy, JobExpired, RateLimited, RelayUnavailable
from emailq.core.job import EmailJob
from emailq.core.store import redis_client
from emailq.worker.circuit import BASE_S, Circuit, account
from emailq.worker.ledger import Also, JobState, Ledger
from emailq.worker.locks import Renewer
from emailq.worker.outcome import (
    Outcome,
    bcc_only,
    judge_error,
    judge_result,
    relay_failure,
    report,
)
from emailq.worker.ratelimit import RateLimiter, limiter_for
from emailq.worker.recorder import recorder
from emailq.worker.sender import SendResult, SMTPSender
from emailq.worker.wire import message_bytes

if TYPE_CHECKING:
    from emailq.worker.completion import Completion

log = logging.getLogger(__name__)

# A job whose worker died this many times mid-send is a poison message (it may be
# what kills the worker); it goes to the dead-letter queue instead of looping.
MAX_LOST_STARTS = 3


class WorkerLost(Exception):
    """The job's workers died mid-send too often; it is dead-lettered as crashed."""


def send_deadline_s(settings: Settings) -> float:
    """The longest one send may hold its job: a handful of SMTP commands, each bounded."""
    return max(60.0, 10 * settings.smtp_timeout_s)


def deliver(
    job: EmailJob,
    *,
    job_id: str,
    sender: SMTPSender,
    ledger: Ledger,
    settings: Settings,
    limiter: RateLimiter | None = None,
    circuit: Circuit | None = None,
    completion: "Completion | None" = None,
) -> dict[str, Any]:
    """Send ``job`` to every recipient that does not have it yet.

    With a ``completion``, a job that ends sent has its result stored and its message
    acknowledged by the same write that records it (``emailq.worker.completion``).

    Raises ``TransientError`` (some recipients should be retried), ``PermanentError``
    (some can never be reached; the rest are recorded), ``ConfigurationError``,
    ``JobBusy`` (another worker holds the job), ``RateLimited``, ``CircuitOpen`` or
    ``RelayUnavailable`` (the relay cannot be reached), ``JobExpired`` or ``WorkerLost``.
    """
    ready = prepare(
        job, job_id=job_id, ledger=ledger, settings=settings, limiter=limiter, circuit=circuit
    )
    if isinstance(ready, dict):
        return ready  # already sent: nothing to do
    ready.completion = completion
    return send_one(ready, sender)


@dataclass(eq=False)
class Ready:
    """A job whose lock is held and whose bytes are built: ``finish`` records it or lets it go."""

    job: EmailJob
    job_id: str
    token: str
    state: JobState
    pending: list[str]  # the recipients still to be sent the message
    info: dict[str, Any]
    message: bytes
    ledger: Ledger
    settings: Settings
    circuit: Circuit | None
    completion: "Completion | None" = None  # written with the record of a clean send

    @property
    def envelope_from(self) -> str:
        return self.settings.sender.addr_spec

    def release(self) -> None:
        """Let the job go unrecorded: nothing of its message went out."""
        self.ledger.release(self.job_id, self.token)


def prepare(
    job: EmailJob,
    *,
    job_id: str,
    ledger: Ledger,
    settings: Settings,
    limiter: RateLimiter | None = None,
    circuit: Circuit | None = None,
) -> Ready | dict[str, Any]:
    """Everything before the send: expiry, breaker, lock, who still needs it, the bytes.

    Returns the report of a job already over (its lock let go), or raises as ``deliver``.
    """
    from_ = settings.sender
    if job.queued_at is not None and time.time() - job.queued_at > settings.max_job_age_s:
        # Nothing waits for ever, not even a job deferred without spending its budget.
        raise JobExpired(
            f"job {job_id} waited longer than MAX_JOB_AGE_S ({settings.max_job_age_s} s)"
        )
    if circuit is not None:
        circuit.check()  # raises CircuitOpen while the relay is held back
    token, state = ledger.begin(job_id, hold_s=send_deadline_s(settings))
    if token is None:
        raise JobBusy(
            f"job {job_id} is being delivered by another worker (its lock ends in "
            f"{state.locked_for_s:.1f} s unless renewed)", wait_s=state.locked_for_s,
        )  # fmt: skip
    kept = False  # once true, the lock is the caller's (or the deferral released it)
    try:
        if state.final is not None:
            log.info("job %s already %s; skipping the duplicate delivery", job_id, state.final)
            return report(job_id, from_.domain, state, job=job, status=state.final, duplicate=True)
        if state.unrecorded_starts > MAX_LOST_STARTS:
            raise WorkerLost(f"job {job_id}: {state.unrecorded_starts - 1} workers died sending it")
        pending = [r for r in job.recipients if r not in state.delivered and r not in state.failed]
        if limiter is not None and (wait := limiter.acquire(cost=len(pending))) is not None:
            ledger.defer(job_id, token)
            kept = True
            raise RateLimited(wait)
        info = job.tracking_info()
        recorder().emit("sending", job_id, info, attempts=len(state.attempts))
        message = message_bytes(job, job_id=job_id, sender=from_)
        ready = Ready(job, job_id, token, state, pending, info, message, ledger, settings, circuit)
        kept = True
        return ready
    finally:
        if not kept:
            ledger.release(job_id, token)


def send_one(ready: Ready, sender: SMTPSender) -> dict[str, Any]:
    """Send a prepared job in a transaction of its own, then judge and record it."""
    try:
        result = sender.send(ready.message, sender=ready.envelope_from, recipients=ready.pending)
    except Exception as exc:
        error = exc
    except BaseException:
        ready.release()
        raise
    else:
        return finish(ready, result=result)
    return finish(ready, error=error)


def finish(
    ready: Ready, *, result: SendResult | None = None, error: Exception | None = None
) -> dict[str, Any]:
    """Judge a send (its result, or the error it raised), record it, and report or raise."""
    job, job_id, state, circuit = ready.job, ready.job_id, ready.state, ready.circuit
    hidden = bcc_only(job)
    recorded = False
    try:
        if error is not None:
            attempts = len(state.attempts) + 1
            outcome = judge_error(error, ready.pending, attempts=attempts, hidden=hidden)
            if outcome is None:
                raise error  # a bug: dead-lettered as crashed, with its traceback
            if circuit is not None and relay_failure(error, outcome.error):
                wait = circuit.failed()
                relay = RelayUnavailable(str(outcome.error), wait_s=max(wait, BASE_S))
                outcome = replace(outcome, error=relay)
            if outcome.error is not error:
                outcome.error.__cause__ = error  # type: ignore[union-attr]
        else:
            assert result is not None
            if circuit is not None:
                circuit.succeeded()
            outcome = judge_result(
                result, earlier_failed=state.failed, earlier_delivered=state.delivered,
                hidden=hidden,
            )  # fmt: skip
            log.info(
                "job %s sent to %d recipient(s), %d refused: %s %s",
                job_id, len(result.accepted), len(result.refused), *result.reply,
            )  # fmt: skip
        recorded = True  # from here the ledger owns the write, even if Redis is away
        domain = ready.settings.sender.domain
        if outcome.error is None and outcome.final == "sent" and ready.completion is not None:
            state.delivered.update(outcome.delivered)  # as the record will: for the result
            result = report(
                job_id, domain, state, job=job, hidden=hidden, status="sent", sent_at=time.time()
            )
            record(
                outcome, job_id=job_id, state=state, ledger=ready.ledger, token=ready.token,
                info=ready.info, also=ready.completion.also(result),
            )  # fmt: skip
            ready.completion.done()
            return result
        record(
            outcome, job_id=job_id, state=state, ledger=ready.ledger, token=ready.token,
            info=ready.info,
        )  # fmt: skip
        if outcome.error is not None:
            raise outcome.error
        return report(
            job_id, domain, state, job=job, hidden=hidden, status=outcome.final, sent_at=time.time()
        )
    finally:
        if not recorded:
            ready.release()


def record(
    outcome: Outcome, *, job_id: str, state: JobState, ledger: Ledger, token: str,
    info: dict[str, Any], also: Also | None = None,
) -> None:  # fmt: skip
    """Write the attempt to the tracking store, then to the ledger (releasing the lock).

    A ledger write that fails is kept by the ledger and written once Redis answers.
    """
    for rcpt, (code, text) in outcome.attempt.get("refused", {}).items():
        log.warning("job %s: recipient %s refused: %s %s", job_id, rcpt, code, text)
    track = recorder()
    track.emit("attempt", job_id, **outcome.attempt)
    if outcome.final is not None:  # sent, or partial
        track.emit(outcome.final, job_id, info, attempts=len(state.attempts) + 1)
    ledger.record(
        job_id, state, delivered=list(outcome.delivered), failed=outcome.failed, token=token,
        final=outcome.final, attempt=outcome.attempt, count=outcome.final, also=also,
    )  # fmt: skip


@dataclass(frozen=True)
class Shared:
    """What every thread of a worker process shares: one pool, one ledger, one breaker."""

    sender: SMTPSender
    ledger: Ledger
    limiter: RateLimiter | None
    circuit: Circuit


_shared: Shared | None = None
_shared_lock = threading.Lock()


def shared() -> Shared:
    """The process's sender, ledger, limiter and circuit breaker, made on first use."""
    global _shared
    with _shared_lock:
        if _shared is None:
            settings = get_settings()
            client = redis_client()
            _shared = Shared(
                SMTPSender(settings), Ledger(client, renewer=Renewer(client)),
                limiter_for(settings), Circuit(client, account(settings)),
            )  # fmt: skip
        return _shared


def close_shared_sender() -> None:
    """QUIT the process's SMTP connections, if it ever opened any."""
    with _shared_lock:
        if _shared is not None:
            _shared.sender.close()
