"""A benchmark SMTP sink with a set network latency, PIPELINING advertised, AUTH accepted.

Each reply leaves a set number of ms after the command it answers arrived (for the
final reply to DATA, after the closing dot): a client that waits for every reply
waits that long per command; one that pipelines a group waits that long once.
Runs in its own process. It counts messages and their recipients, records the time
of the first RCPT and of each 250 to DATA, plus per-recipient times for recipients
with a watched prefix (for latency).
"""

import asyncio
import logging
import multiprocessing as mp
import time
from collections import deque

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult


class DelayedSMTP(SMTP):
    delay_s = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._received = 0
        self._arrivals = deque([(0, time.monotonic())])  # (bytes received, at)
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        self._arrivals.append((self._received, time.monotonic()))
        super().data_received(data)

    async def push(self, status: str) -> None:
        if self.delay_s:
            await asyncio.sleep(self._answered_at() + self.delay_s - time.monotonic())
        await super().push(status)

    def _answered_at(self) -> float:
        """When the last byte read so far arrived: the end of the command being answered."""
        read = self._received - len(self._reader._buffer)
        while len(self._arrivals) > 1 and self._arrivals[0][0] < read:
            self._arrivals.popleft()
        return self._arrivals[0][1]


class Counter:
    def __init__(self, count, recipients, started, first, last, watched, prefix: str) -> None:
        self.count, self.recipients, self.started, self.first, self.last = (
            count, recipients, started, first, last,
        )  # fmt: skip
        self.watched, self.prefix = watched, prefix

    async def handle_EHLO(self, server, session, envelope, hostname, responses) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:
        if not self.started.value:
            self.started.value = time.time()
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        now = time.time()
        with self.count.get_lock():
            if self.count.value == 0:
                self.first.value = now
            self.count.value += 1
            self.recipients.value += len(envelope.rcpt_tos)
            self.last.value = now
        for rcpt in envelope.rcpt_tos:
            if rcpt.startswith(self.prefix):
                self.watched.put((rcpt, now))
        return "250 OK"


def _serve(port, delay_ms, counters, watched, prefix, ready) -> None:
    # aiosmtpd logs every command and a warning per login; the sink must not pay for that.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    DelayedSMTP.delay_s = delay_ms / 1000
    handler = Counter(*counters, watched, prefix)

    def authenticator(*_):
        return AuthResult(success=True)

    controller = Controller(
        handler, hostname="127.0.0.1", port=port, authenticator=authenticator,
        auth_require_tls=False, ready_timeout=30,
    )  # fmt: skip
    controller.factory = lambda: DelayedSMTP(  # type: ignore[method-assign]
        handler, authenticator=authenticator, auth_require_tls=False, hostname="sink"
    )
    controller.start()
    ready.set()
    while True:
        time.sleep(3600)


class Sink:
    def __init__(self, port: int, delay_ms: float, *, watch_prefix: str = "oncall") -> None:
        ctx = mp.get_context("spawn")
        self.count = ctx.Value("l", 0)
        self.recipients = ctx.Value("l", 0)  # of the messages counted
        self.started = ctx.Value("d", 0.0)  # the first RCPT
        self.first = ctx.Value("d", 0.0)
        self.last = ctx.Value("d", 0.0)
        self.watched = ctx.Queue()
        ready = ctx.Event()
        self.process = ctx.Process(
            target=_serve,
            args=(port, delay_ms,
                  (self.count, self.recipients, self.started, self.first, self.last),
                  self.watched, watch_prefix, ready),
            daemon=True,
        )  # fmt: skip
        self.process.start()
        ready.wait(30)

    def reset(self) -> None:
        with self.count.get_lock():
            self.count.value, self.recipients.value = 0, 0
            self.started.value, self.first.value, self.last.value = 0.0, 0.0, 0.0

    def wait_for(self, n: int, timeout: float) -> None:
        deadline = time.time() + timeout
        while self.count.value < n:
            if time.time() > deadline:
                raise TimeoutError(f"sink got {self.count.value} of {n}")
            time.sleep(0.05)

    def drain_rate(self) -> float:
        span = self.last.value - self.first.value
        return (self.count.value - 1) / span if span > 0 else float("nan")

    def recipient_rate(self) -> float:
        """Recipients of the messages taken, from the first RCPT to the last message."""
        span = self.last.value - self.started.value
        return self.recipients.value / span if span > 0 else float("nan")

    def stop(self) -> None:
        self.process.kill()
        self.process.join()
