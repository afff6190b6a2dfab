"""SMTPSender's connection pool under threads, against real aiosmtpd servers.

A slow QUIT stalls only the thread saying it; a failed connect leaves no socket open;
a thread waiting at SMTP_MAX_CONNECTIONS sleeps until a connection or a slot is freed.
"""

import asyncio
import smtplib
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from types import FrameType, TracebackType
from typing import Any

import psutil
import pytest

from emailq.config import Settings
from emailq.core.errors import TLSVerificationError
from emailq.worker import sender as sender_module
from emailq.worker.sender import SendResult, SMTPSender
from tests.integration.test_sender import make_settings, send
from tests.support.smtp import DROP, SMTPTestServer

# Generous bounds for "did it happen": met in milliseconds, even on a loaded machine.
WAIT_S = 10.0
# The server answers a stalled QUIT by itself after this long, should a test not release it.
QUIT_STALL_LIMIT_S = 20.0


@pytest.fixture
def make_sender() -> Iterator[Callable[[Settings], SMTPSender]]:
    """Senders built in the test; closed (QUIT) before the servers stop."""
    senders: list[SMTPSender] = []

    def make(settings: Settings) -> SMTPSender:
        senders.append(SMTPSender(settings))
        return senders[-1]

    yield make
    for sender in senders:
        sender.close()


@pytest.fixture
def start_server() -> Iterator[Callable[..., SMTPTestServer]]:
    """Start aiosmtpd servers (``SMTPTestServer`` arguments); all stop after the test."""
    started: list[SMTPTestServer] = []

    def start(server_context: ssl.SSLContext | None = None, **kwargs: Any) -> SMTPTestServer:
        started.append(SMTPTestServer(server_context, **kwargs).__enter__())
        return started[-1]

    yield start
    for server in reversed(started):
        server.__exit__(None, None, None)


class StalledQuit:
    """Holds every QUIT the server receives until the block exits: a slow server, on cue.

    Only sessions opened after it is installed: aiosmtpd binds a session's hooks at its start.
    """

    def __init__(self, server: SMTPTestServer) -> None:
        self.started = threading.Event()  # a QUIT arrived and is held
        self.answered = threading.Event()  # a held QUIT was let go
        self._release = threading.Event()
        # aiosmtpd looks up handle_* hooks on the handler for every new session.
        server.handler.handle_QUIT = self._handle_quit  # type: ignore[attr-defined]

    async def _handle_quit(self, server: object, session: object, envelope: object) -> str:
        self.started.set()
        await asyncio.to_thread(self._release.wait, QUIT_STALL_LIMIT_S)
        self.answered.set()
        return "221 Bye"

    def __enter__(self) -> "StalledQuit":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._release.set()


def finished(future: Future[Any]) -> bool:
    return future in wait([future], timeout=WAIT_S).done


def until(condition: Callable[[], object]) -> bool:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# --- QUIT happens outside the pool lock ----------------------------------------------------


def test_stale_connection_quitting_slowly_does_not_hold_up_another_threads_send(
    smtp_server, ca_file, make_sender, monkeypatch
):
    settings = make_settings(smtp_server, ca_file=ca_file, smtp_max_connections=2)
    sender = make_sender(settings)
    max_idle_s = sender_module.MAX_IDLE_S

    with ThreadPoolExecutor(2) as pool, StalledQuit(smtp_server) as quit_:
        send(sender, settings)  # one idle connection in the pool
        monkeypatch.setattr(sender_module, "MAX_IDLE_S", 0.0)  # too old to reuse: retired
        first = pool.submit(send, sender, settings)
        assert quit_.started.wait(WAIT_S)
        monkeypatch.setattr(sender_module, "MAX_IDLE_S", max_idle_s)

        second = pool.submit(send, sender, settings)

        assert finished(second), "another thread's QUIT held up this send"
        assert not quit_.answered.is_set()
        assert second.result()[0].accepted == ("ann@example.com",)
    # The QUIT answered, the first thread takes the connection the second returned.
    assert first.result(timeout=WAIT_S)[0].accepted == ("ann@example.com",)
    assert len(smtp_server.handler.wait_for(3)) == 3
    assert sender.opened == 2


def test_close_quitting_slowly_does_not_hold_up_another_threads_send(
    smtp_server, ca_file, make_sender
):
    settings = make_settings(smtp_server, ca_file=ca_file, smtp_max_connections=2)
    sender = make_sender(settings)

    with ThreadPoolExecutor(2) as pool, StalledQuit(smtp_server) as quit_:
        send(sender, settings)  # one idle connection in the pool
        closing = pool.submit(sender.close)
        assert quit_.started.wait(WAIT_S)

        second = pool.submit(send, sender, settings)

        assert finished(second), "close() held up another thread's send"
        assert not quit_.answered.is_set()
        assert not closing.done()
    closing.result(timeout=WAIT_S)
    assert len(smtp_server.handler.wait_for(2)) == 2
    assert sender.opened == 2


# --- A failed connect closes its socket ----------------------------------------------------


def client_sockets_to(port: int) -> list[Any]:
    """This process's TCP sockets connected to ``port``, whatever their state."""
    return [c for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr.port == port]


@pytest.mark.parametrize(
    ("server_kwargs", "settings_kwargs", "trust_ca", "error"),
    [
        pytest.param({}, {"password": "wrong"}, True, smtplib.SMTPAuthenticationError, id="535"),
        pytest.param(
            {"mode": "none", "auth": False}, {}, True, smtplib.SMTPNotSupportedError,
            id="no-starttls",
        ),
        pytest.param({}, {}, False, TLSVerificationError, id="starttls-unknown-ca"),
        pytest.param(
            {"mode": "ssl", "auth": False}, {"security": "ssl", "password": None}, False,
            TLSVerificationError, id="ssl-unknown-ca",
        ),
    ],
)  # fmt: skip
def test_failed_connect_leaves_no_socket_open(
    server_context, ca_file, start_server, make_sender,
    server_kwargs, settings_kwargs, trust_ca, error,
):  # fmt: skip
    server = start_server(server_context, **server_kwargs)
    settings = make_settings(server, ca_file=ca_file if trust_ca else None, **settings_kwargs)
    sender = make_sender(settings)
    # Kept like a caller that logs or retries would: their tracebacks hold each session
    # object, so an unclosed socket stays open however soon the garbage collector runs.
    errors: list[BaseException] = []

    for _ in range(10):
        with pytest.raises(error) as caught:
            sender.connect()
        errors.append(caught.value)

    assert client_sockets_to(server.port) == []
    assert sender.opened == 0
    assert server.handler.logins == 0


# --- Threads at the cap sleep until woken --------------------------------------------------


def traced_send(sender: SMTPSender, settings: Settings) -> tuple[SendResult, int]:
    """``send`` and how many times its thread went to sleep on a Condition meanwhile."""
    sleeps = 0
    wait_code = threading.Condition.wait.__code__

    def count(frame: FrameType, event: str, arg: object) -> None:
        nonlocal sleeps
        if event == "call" and frame.f_code is wait_code:
            sleeps += 1

    previous = sys.gettrace()
    sys.settrace(count)
    try:
        result, _ = send(sender, settings)
    finally:
        sys.settrace(previous)
    return result, sleeps


@pytest.mark.parametrize(("outcome", "opened"), [("returned", 1), ("rotated", 2), ("discarded", 2)])
def test_thread_waiting_at_the_cap_sleeps_until_a_connection_or_slot_is_freed(
    smtp_server, ca_file, make_sender, monkeypatch, outcome, opened
):
    settings = make_settings(smtp_server, ca_file=ca_file, smtp_max_connections=1)
    sender = make_sender(settings)
    # The holder keeps the only connection this long: a poller would wake a dozen times.
    smtp_server.handler.data_delay_s = 0.6
    if outcome == "rotated":  # checked in after its last message: closed, its slot freed
        monkeypatch.setattr(sender_module, "MAX_MESSAGES_PER_CONNECTION", 1)
    if outcome == "discarded":  # the server hangs up mid-DATA: dropped, its slot freed
        smtp_server.handler.data_replies.append(DROP)

    with ThreadPoolExecutor(2) as pool:
        holder = pool.submit(send, sender, settings)
        assert until(lambda: smtp_server.handler.commands)  # RCPT: the holder has it, 0.6 s more
        waiter = pool.submit(traced_send, sender, settings)

        assert finished(holder) and finished(waiter)
    if outcome == "discarded":
        assert isinstance(holder.exception(), smtplib.SMTPServerDisconnected)
    else:
        assert holder.result()[0].accepted == ("ann@example.com",)
    result, sleeps = waiter.result()
    assert result.accepted == ("ann@example.com",)
    assert sleeps >= 1, "the waiter never had to wait: the test proves nothing"
    assert sleeps <= 2, f"the waiter slept {sleeps} times: it polls instead of waiting to be woken"
    assert sender.opened == smtp_server.handler.logins == opened
