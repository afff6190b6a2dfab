"""A benchmark SMTP sink with a set network latency, PIPELINING advertised, AUTH accepted.

Each reply leaves a set number of ms after the command it answers arrived (for the
final reply to DATA, after the closing dot): a client that waits for every reply
waits that long per command; one that pipelines a group waits that long once.
Runs in its own process. It counts messages and records the time of each 250 to
DATA, plus per-recipient times for recipients with a watched prefix (for latency).
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
    def __init__(self, count, first, last, watched, prefix: str) -> None:
        self.count, self.first, self.last, self.watched, self.prefix = (
            count, first, last, watched, prefix,
        )  # fmt: skip

    async def handle_EHLO(self, server, session, envelope, hostname, responses) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_DATA(self, server, session, envelope) -> str:
        now = time.time()
        with self.count.get_lock():
            if self.count.value == 0:
                self.first.value = now
            self.count.value += 1
            self.last.value = now
        for rcpt in envelope.rcpt_tos:
            if rcpt.startswith(self.prefix):
                self.watched.put((rcpt, now))
        return "250 OK"


def _serve(port, delay_ms, count, first, last, watched, prefix, ready) -> None:
    # aiosmtpd logs every command and a warning per login; the sink must not pay for that.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    DelayedSMTP.delay_s = delay_ms / 1000
    handler = Counter(count, first, last, watched, prefix)

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
        self.first = ctx.Value("d", 0.0)
        self.last = ctx.Value("d", 0.0)
        self.watched = ctx.Queue()
        ready = ctx.Event()
        self.process = ctx.Process(
            target=_serve,
            args=(port, delay_ms, self.count, self.first, self.last, self.watched,
                  watch_prefix, ready),
            daemon=True,
        )  # fmt: skip
        self.process.start()
        ready.wait(30)

    def reset(self) -> None:
        with self.count.get_lock():
            self.count.value, self.first.value, self.last.value = 0, 0.0, 0.0

    def wait_for(self, n: int, timeout: float) -> None:
        deadline = time.time() + timeout
        while self.count.value < n:
            if time.time() > deadline:
                raise TimeoutError(f"sink got {self.count.value} of {n}")
            time.sleep(0.05)

    def drain_rate(self) -> float:
        span = self.last.value - self.first.value
        return (self.count.value - 1) / span if span > 0 else float("nan")

    def stop(self) -> None:
        self.process.kill()
        self.process.join()
