"""Counting what a fault did to a batch of jobs: delivered, duplicated, dead-lettered or lost.

A job is identified by its id; the worker writes ``Message-ID: <job_id@example.com>``
on every copy, so the SMTP server's records say which job each message belongs to. Per
job, and per recipient:

- ``delivered``: every recipient received the job's Message-ID at least once;
- ``duplicated``: some recipient received it more than once (``extra_copies`` counts them);
- ``dead``: the dead-letter queue holds an entry for the job, or its ledger
  (``emailq:job:<id>`` field ``final``) says ``dead`` (the reason is then ``ledger``);
- ``pending``: still in a broker queue, unacknowledged, or parked in ``emailq:delayed``;
- ``lost``: a recipient is missing, and the job is neither dead nor pending.

``settle`` waits until nothing is missing (or the time is up) and returns the ``Tally``;
``Tally.summary`` is the one line each fault test prints (``make faults`` runs with ``-s``),
the line the figures in docs/RELIABILITY.md are copied from.
"""

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from emailq.core.keys import DELAYED, DELAYED_CLAIMED, JOB, QUEUES
from emailq.worker import deadletter
from tests.support.smtp import Received

SENDER_DOMAIN = "example.com"
MESSAGE_ID = re.compile(rb"^Message-ID:\s*<([^>@\s]+)@[^>\s]+>", re.IGNORECASE | re.MULTILINE)


@dataclass
class JobOutcome:
    job_id: str
    recipients: tuple[str, ...]
    copies: dict[str, int]  # recipient -> how many copies of this job's message it received
    dead_reason: str | None = None
    final: str | None = None  # the ledger's verdict
    pending: bool = False

    @property
    def delivered(self) -> bool:
        return all(self.copies.get(r, 0) >= 1 for r in self.recipients)

    @property
    def duplicated(self) -> bool:
        return any(n > 1 for n in self.copies.values())

    @property
    def extra_copies(self) -> int:
        return sum(n - 1 for n in self.copies.values() if n > 1)

    @property
    def lost(self) -> bool:
        return not self.delivered and self.dead_reason is None and not self.pending


@dataclass
class Tally:
    outcomes: dict[str, JobOutcome]
    elapsed_s: float = 0.0  # how long ``settle`` waited
    figures: dict[str, Any] = field(default_factory=dict)  # a test's own measurements

    @property
    def counts(self) -> dict[str, Any]:
        reasons = Counter(o.dead_reason for o in self.outcomes.values() if o.dead_reason)
        return {
            "jobs": len(self.outcomes),
            "delivered": sum(o.delivered for o in self.outcomes.values()),
            "lost": sum(o.lost for o in self.outcomes.values()),
            "duplicated": sum(o.duplicated for o in self.outcomes.values()),
            "extra_copies": sum(o.extra_copies for o in self.outcomes.values()),
            "dead_by_reason": dict(sorted(reasons.items())),
            "pending": sum(o.pending and not o.delivered for o in self.outcomes.values()),
        }

    def ids(self, what: str) -> list[str]:
        """The ids of the jobs that are ``lost``, ``duplicated``, ``delivered`` or ``pending``."""
        return sorted(j for j, o in self.outcomes.items() if getattr(o, what))

    def summary(self, label: str) -> str:
        c = self.counts
        dead = ",".join(f"{k}:{v}" for k, v in c["dead_by_reason"].items()) or "0"
        extra = "".join(f" {k}={_fmt(v)}" for k, v in self.figures.items())
        return (
            f"FAULT {label}: jobs={c['jobs']} delivered={c['delivered']} lost={c['lost']} "
            f"duplicated={c['duplicated']} (extra copies {c['extra_copies']}) dead={dead} "
            f"pending={c['pending']}{extra}"
        )

    def report(self, label: str) -> str:
        """Print the summary line (and the ids behind any loss or duplicate); return it."""
        line = self.summary(label)
        print(f"\n{line}")
        for what in ("lost", "duplicated"):
            if ids := self.ids(what):
                print(f"  {what}: {', '.join(ids[:20])}{' ...' if len(ids) > 20 else ''}")
        return line


def _fmt(value: Any) -> str:
    return f"{value:.1f}s" if isinstance(value, float) else str(value)


def job_of(message: Received) -> str | None:
    """The job id in a received message's Message-ID header, if it is one of ours."""
    head = message.data.split(b"\r\n\r\n", 1)[0].replace(b"\r\n", b"\n")
    match = MESSAGE_ID.search(head)
    return match.group(1).decode() if match else None


def copies(messages: Iterable[Received]) -> dict[str, Counter[str]]:
    """job id -> recipient -> copies received."""
    seen: dict[str, Counter[str]] = {}
    for message in messages:
        job_id = job_of(message)
        if job_id is not None:
            seen.setdefault(job_id, Counter()).update(message.rcpt_tos)
    return seen


def pending_ids(client: redis.Redis) -> set[str]:
    """Job ids still waiting: in a queue, unacknowledged in a worker, or parked."""
    ids: set[str] = set()
    for queue in QUEUES:
        for raw in client.lrange(queue, 0, -1):
            ids.add(_kombu_id(json.loads(raw)))
    for raw in client.hvals("unacked"):
        ids.add(_kombu_id(json.loads(raw)[0]))
    for raw in [*client.zrange(DELAYED, 0, -1), *client.hkeys(DELAYED_CLAIMED)]:
        ids.add(json.loads(raw).get("task_id", ""))
    return ids


def unacked_ids(client: redis.Redis) -> set[str]:
    """Job ids a worker has taken and not acknowledged yet."""
    return {_kombu_id(json.loads(raw)[0]) for raw in client.hvals("unacked")}


def _kombu_id(message: dict[str, Any]) -> str:
    return (message.get("headers") or {}).get("id") or message.get("properties", {}).get(
        "correlation_id", ""
    )


def dead_reasons(client: redis.Redis) -> dict[str, str]:
    return {s.entry["job_id"]: s.entry["reason"] for s in deadletter.read(client)}


def tally(
    jobs: Mapping[str, Iterable[str]],
    messages: Iterable[Received],
    client: redis.Redis | None,
) -> Tally:
    """Each job's outcome now. ``client`` None (Redis is down): nothing counts as dead/pending."""
    seen = copies(messages)
    dead: dict[str, str] = {}
    pending: set[str] = set()
    finals: dict[str, str | None] = {}
    if client is not None:
        dead = dead_reasons(client)
        pending = pending_ids(client)
        pipe = client.pipeline(transaction=False)
        for job_id in jobs:
            pipe.hget(JOB + job_id, "final")
        for job_id, final in zip(jobs, pipe.execute(), strict=True):
            finals[job_id] = final.decode() if final else None
    outcomes = {}
    for job_id, recipients in jobs.items():
        reason = dead.get(job_id)
        if reason is None and finals.get(job_id) == "dead":
            reason = "ledger"
        outcomes[job_id] = JobOutcome(
            job_id,
            tuple(recipients),
            dict(seen.get(job_id, {})),
            dead_reason=reason,
            final=finals.get(job_id),
            pending=job_id in pending,
        )
    return Tally(outcomes)


def settle(
    jobs: Mapping[str, Iterable[str]],
    messages: Callable[[], list[Received]],
    client: redis.Redis,
    *,
    timeout: float,
    quiet_s: float = 1.0,
    idle_s: float = 10.0,
) -> Tally:
    """Wait until every job is delivered or dead and none is still queued, unacknowledged or
    parked (so a redelivery that would duplicate has happened), or until ``timeout``; then
    ``quiet_s`` more. Gives up early once nothing is pending in Redis and nothing arrived for
    ``idle_s``: what is missing then is lost. Returns the tally: a job still pending at the
    deadline is not lost."""
    start = time.monotonic()
    deadline = start + timeout
    seen, changed = -1, start
    while True:
        try:
            result = tally(jobs, messages(), client)
            reachable = True
        except redis.RedisError:
            result = tally(jobs, messages(), None)
            reachable = False
        outcomes = result.outcomes.values()
        settled = all((o.delivered or o.dead_reason) and not o.pending for o in outcomes)
        now = time.monotonic()
        if (arrived := len(messages())) != seen:
            seen, changed = arrived, now
        idle = reachable and not any(o.pending for o in outcomes) and now - changed > idle_s
        if settled or idle or now >= deadline:
            break
        time.sleep(0.25)
    time.sleep(quiet_s)
    try:
        result = tally(jobs, messages(), client)
    except redis.RedisError:
        result = tally(jobs, messages(), None)
    result.elapsed_s = time.monotonic() - start
    return result


def aof_commands(directory: Path) -> Iterator[list[bytes]]:
    """Every command in a redis-server's append-only files (Redis 7's appendonlydir), in order."""
    folder = directory / "appendonlydir"
    manifest = next(folder.glob("*.manifest")).read_text().split("\n")
    names = [line.split()[1] for line in manifest if " type i" in f" {line}"]
    for name in names:
        data = (folder / name).read_bytes()
        i = 0
        while i < len(data):  # RESP arrays of bulk strings: *N, then N times $LEN and the bytes
            end = data.index(b"\r\n", i)
            count, i = int(data[i + 1 : end]), end + 2
            args: list[bytes] = []
            for _ in range(count):
                end = data.index(b"\r\n", i)
                length = int(data[i + 1 : end])
                args.append(data[end + 2 : end + 2 + length])
                i = end + 2 + length + 2
            yield args


def never_started(client: redis.Redis, job_ids: Iterable[str]) -> set[str]:
    """The jobs no worker ever began: no ledger hash. With kombu's own transport, a lost job
    among them was taken off its queue (BRPOP) by a worker that died before writing its
    ``unacked`` entry."""
    pipe = client.pipeline(transaction=False)
    ids = list(job_ids)
    for job_id in ids:
        pipe.exists(JOB + job_id)
    return {j for j, exists in zip(ids, pipe.execute(), strict=True) if not exists}


def popped_never_unacked(directory: Path) -> set[str]:
    """Job ids Redis popped off a queue for a worker, with no unacked entry written after.

    kombu's own Redis transport takes a job with BRPOP, then writes it to the ``unacked``
    hash in a second round trip, so Redis (or the worker) dying in between leaves the job
    nowhere; emailq's fetch script does both in one ``MULTI``/``EXEC`` (commands inside
    one count as simultaneous). Replays the queue lists from the AOF to know which job
    each RPOP took.
    """
    queues: dict[bytes, list[str]] = {q.encode(): [] for q in QUEUES}
    last_pop: dict[str, int] = {}
    last_unacked: dict[str, int] = {}
    block: int | None = None
    for i, args in enumerate(aof_commands(directory)):
        verb = args[0].upper()
        if verb == b"MULTI":
            block = i
        elif verb == b"EXEC":
            block = None
        n = i if block is None else block
        if verb in (b"LPUSH", b"RPUSH") and args[1] in queues:
            ids = [_kombu_id(json.loads(raw)) for raw in args[2:]]
            if verb == b"LPUSH":
                queues[args[1]][:0] = reversed(ids)
            else:
                queues[args[1]].extend(ids)
        elif verb == b"RPOP" and args[1] in queues and queues[args[1]]:
            last_pop[queues[args[1]].pop()] = n
        elif verb == b"HSET" and args[1] == b"unacked":
            for raw in args[3::2]:
                last_unacked[_kombu_id(json.loads(raw)[0])] = n
    return {j for j, n in last_pop.items() if last_unacked.get(j, -1) < n}


def last_delivery(messages: Iterable[Received]) -> float:
    """The monotonic time the last message arrived (0.0 if none did)."""
    return max((m.at for m in messages), default=0.0)
