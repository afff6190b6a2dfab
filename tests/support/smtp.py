"""An in-process aiosmtpd server that records what it receives and can inject faults."""

import asyncio
import logging
import ssl
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.support import free_port

# aiosmtpd warns on every login that an attribute it sets itself is deprecated.
logging.getLogger("mail.log").setLevel(logging.ERROR)

USER = "sender@example.com"
PASSWORD = "s3cret-Pa55word"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    at: float = field(default_factory=time.monotonic)

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]


DROP = "drop"  # a scripted DATA reply: cut the connection after the final dot, before replying


def _next(script: str | list[str] | None) -> str | None:
    """A str is replied every time; a list is consumed, one reply per attempt."""
    if isinstance(script, list):
        return script.pop(0) if script else None
    return script


class RecordingHandler:
    """Accepts mail and records it, with scripted faults.

    - ``rcpt_replies[address]``: the reply to RCPT for that address;
    - ``data_replies``: replies to the next DATA commands, whoever they are for;
    - ``data_replies_for[first recipient]``: replies to DATA for that job's message;
    - ``mail_replies``: replies to the next MAIL commands;
    - ``data_command_replies``: replies to the next DATA commands themselves, before any
      message (a scripted 354 is only a reply: the server then reads no message);
    - ``auth_failures``: how many logins to refuse with 535 first.
    Every RCPT and DATA command is logged in ``commands`` with its time and reply.
    EHLO advertises PIPELINING unless ``pipelining`` is false; ``pipelined`` holds, per
    MAIL, the verbs of the commands that had already arrived behind it, and
    ``behind_data``, per message, its session and the verbs that had arrived behind
    its end of data (the next message's MAIL, RCPT and DATA when written with it).
    """

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.rcpt_replies: dict[str, str | list[str]] = {}
        self.data_replies: list[str] = []
        self.data_replies_for: dict[str, list[str]] = {}
        self.auth_failures = 0
        self.data_delay_s = 0.0
        self.rcpt_delay_s = 0.0
        self.logins = 0
        self._refused_sessions: set[int] = set()
        self.commands: list[tuple[float, str, str, str]] = []  # (time, verb, address, reply)
        self.mail_replies: list[str] = []
        self.data_command_replies: list[str] = []
        self.pipelining = True
        self.pipelined: list[list[str]] = []
        self.behind_data: list[tuple[int, list[str]]] = []
        self.most_behind_rcpt = 0  # the most commands seen waiting behind one RCPT
        self._changed = threading.Condition()

    def attempts(self, address: str, verb: str = "RCPT") -> list[tuple[float, str]]:
        """(time, reply) of every ``verb`` command for ``address``."""
        return [(t, reply) for t, v, a, reply in self.commands if v == verb and a == address]

    async def handle_EHLO(self, server, session, envelope, hostname, responses) -> list[str]:
        session.host_name = hostname  # aiosmtpd leaves this to a handler that has the hook
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options) -> str:
        self.pipelined.append(_waiting(server))
        reply = _next(self.mail_replies)
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:
        self.most_behind_rcpt = max(self.most_behind_rcpt, len(_waiting(server)))
        if self.rcpt_delay_s:
            await asyncio.sleep(self.rcpt_delay_s)
        reply = _next(self.rcpt_replies.get(address)) or "250 OK"
        self.commands.append((time.monotonic(), "RCPT", address, reply))
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.behind_data.append((id(session), _waiting(server)))
        if self.data_delay_s:
            await asyncio.sleep(self.data_delay_s)
        first = envelope.rcpt_tos[0]
        reply = _next(self.data_replies_for.get(first)) or _next(self.data_replies)
        self.commands.append((time.monotonic(), "DATA", first, reply or "250"))
        if reply == DROP:
            server.transport.abort()
            return "250 never sent"
        if reply:
            return reply
        received = Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        with self._changed:
            self.messages.append(received)
            self._changed.notify_all()
        return "250 2.0.0 OK queued"

    def authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (
            auth_data.login.decode(),
            auth_data.password.decode(),
        ) == (USER, PASSWORD)
        # smtplib tries each mechanism in turn: a refused session refuses them all.
        if ok and (self.auth_failures > 0 or id(session) in self._refused_sessions):
            if id(session) not in self._refused_sessions:
                self.auth_failures -= 1
                self._refused_sessions.add(id(session))
            self.commands.append((time.monotonic(), "AUTH", USER, "535"))
            return AuthResult(
                success=False, handled=False, message="535 5.7.8 Authentication credentials invalid"
            )
        if ok:
            self.logins += 1
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd sends the 535

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        """Block until ``count`` messages have arrived; returns them all."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.messages) >= count, timeout):
                raise TimeoutError(f"{len(self.messages)} of {count} messages after {timeout}s")
            return list(self.messages)


def _waiting(server: SMTP) -> list[str]:
    """The verbs of the complete command lines the server has received but not read yet."""
    waiting = bytes(server._reader._buffer).split(b"\r\n")[:-1]
    return [line.split(b" ")[0].decode("ascii", "replace").upper() for line in waiting]


class _ScriptedSMTP(SMTP):
    async def smtp_DATA(self, arg: str) -> None:
        reply = _next(self.event_handler.data_command_replies)
        if reply:
            await self.push(reply)
            return
        await super().smtp_DATA(arg)


class _Controller(Controller):
    def factory(self) -> SMTP:
        return _ScriptedSMTP(self.handler, **self.SMTP_kwargs)


class SMTPTestServer:
    """STARTTLS + AUTH by default (``mode="starttls"``); ``"ssl"`` for implicit TLS; ``"none"``."""

    def __init__(
        self,
        server_context: ssl.SSLContext | None,
        *,
        mode: str = "starttls",
        auth: bool = True,
        idle_timeout_s: float = 300,
        pipelining: bool = True,
    ) -> None:
        self.handler = RecordingHandler()
        self.handler.pipelining = pipelining
        self.port = free_port()
        kwargs: dict = {"timeout": idle_timeout_s, "data_size_limit": 64 * 1024 * 1024}
        if mode == "starttls":
            kwargs.update(tls_context=server_context, require_starttls=True)
        if auth:
            kwargs.update(
                authenticator=self.handler.authenticate,
                auth_required=True,
                auth_require_tls=mode == "starttls",  # aiosmtpd counts only STARTTLS as TLS
            )
        self._controller_args = {
            "hostname": "127.0.0.1",
            "port": self.port,
            "ssl_context": server_context if mode == "ssl" else None,
            **kwargs,
        }
        self.controller = _Controller(self.handler, **self._controller_args)

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    def __enter__(self) -> "SMTPTestServer":
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop(no_assert=True)

    def down(self) -> None:
        """Stop listening: connections are refused until ``up()``."""
        self.controller.stop()

    def up(self) -> None:
        """Listen again on the same port, with the same handler and its records."""
        self.controller = _Controller(self.handler, **self._controller_args)
        self.controller.start()
