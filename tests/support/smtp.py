"""An in-process aiosmtpd server that records what it receives and can inject faults."""

import asyncio
import ssl
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.support import free_port

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


class RecordingHandler:
    """Accepts mail and records it. Faults: per-recipient RCPT replies, queued DATA replies."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.rcpt_replies: dict[str, str] = {}
        self.data_replies: list[str] = []
        self.data_delay_s = 0.0
        self.rcpt_delay_s = 0.0
        self.logins = 0
        self._changed = threading.Condition()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:
        if self.rcpt_delay_s:
            await asyncio.sleep(self.rcpt_delay_s)
        reply = self.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_delay_s:
            await asyncio.sleep(self.data_delay_s)
        if self.data_replies:
            return self.data_replies.pop(0)
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
        if ok:
            self.logins += 1
        return AuthResult(success=ok)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        """Block until ``count`` messages have arrived; returns them all."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.messages) >= count, timeout):
                raise TimeoutError(f"{len(self.messages)} of {count} messages after {timeout}s")
            return list(self.messages)


class SMTPTestServer:
    """STARTTLS + AUTH by default (``mode="starttls"``); ``"ssl"`` for implicit TLS; ``"none"``."""

    def __init__(
        self,
        server_context: ssl.SSLContext | None,
        *,
        mode: str = "starttls",
        auth: bool = True,
        idle_timeout_s: float = 300,
    ) -> None:
        self.handler = RecordingHandler()
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
        self.controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            ssl_context=server_context if mode == "ssl" else None,
            **kwargs,
        )

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    def __enter__(self) -> "SMTPTestServer":
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()
