"""The SMTP sender: verified TLS, login, and a thread-safe pool of reused connections."""

import logging
import smtplib
import socket
import ssl
import threading
import time
from email import policy
from email.message import EmailMessage

from emailq.config import Settings
from emailq.core.errors import ConfigurationError, TLSVerificationError
from emailq.worker.classify import connect_failed
from emailq.worker.pipelining import (
    MAX_PIPELINED_RECIPIENTS,
    SendResult,
    StaleConnection,
    mail_reply,
    pipelined,
    rcpt_groups,
    sort_replies,
)

__all__ = ["MAX_PIPELINED_RECIPIENTS", "SMTPSender", "SendResult", "tls_context"]

log = logging.getLogger(__name__)

# Servers drop idle sessions (Postfix's smtpd_timeout is 300 s); a connection idle
# for longer than this is replaced instead of risking a dead socket mid-job.
MAX_IDLE_S = 60.0
# Many providers cap messages per session (Outlook at 30, others near 100); opening
# a fresh session before the cap avoids a 421 in the middle of a job.
MAX_MESSAGES_PER_CONNECTION = 25


def tls_context(settings: Settings) -> ssl.SSLContext:
    """A verifying context: system CAs plus SMTP_CA_FILE. smtplib verifies nothing without one."""
    context = ssl.create_default_context()
    if settings.smtp_ca_file:
        try:
            context.load_verify_locations(cafile=str(settings.smtp_ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"SMTP_CA_FILE: cannot load {str(settings.smtp_ca_file)!r}: {exc}"
            ) from None
    return context


class _Connection:
    def __init__(self, smtp: smtplib.SMTP) -> None:
        self.smtp = smtp
        self.sent = 0
        self.last_used = time.monotonic()

    @property
    def fresh(self) -> bool:
        return self.sent == 0

    def usable(self) -> bool:
        return (
            self.sent < MAX_MESSAGES_PER_CONNECTION
            and time.monotonic() - self.last_used < MAX_IDLE_S
        )

    def close(self) -> None:
        """QUIT politely. Waits up to SMTP_TIMEOUT_S for the reply: never under the pool lock."""
        try:
            self.smtp.quit()
        except (smtplib.SMTPException, OSError):
            self.smtp.close()

    def discard(self) -> None:
        """Drop a connection in an unknown state, without a word to the server."""
        self.smtp.close()


class SMTPSender:
    """Sends messages over pooled SMTP connections; safe to share between threads.

    Each connection is used by one thread at a time. A thread takes an idle one or
    opens a new one; connections that fail are closed, never returned to the pool.
    The lock guards only the pool's bookkeeping: network I/O (connect, QUIT) runs
    outside it, so a slow server stalls the thread talking to it and no other.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._context = tls_context(settings) if settings.security != "none" else None
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        # Providers cap concurrent sessions per account; threads beyond the cap sleep here
        # until a connection is returned idle or one is closed and frees its slot.
        self._available = threading.Condition(self._lock)
        # Connections counted against the cap: being opened, in use, idle or being closed,
        # so a session still saying QUIT keeps its slot until the server has let it go.
        self._open = 0
        self._waiting = 0  # threads in _checkout: waiting, or about to take a connection
        self.opened = 0  # connections opened over the sender's life

    def connect(self) -> smtplib.SMTP:
        """Open, secure and log in one SMTP session."""
        s = self._settings
        helo = s.smtp_helo_name or socket.gethostname()
        try:
            if s.security == "ssl":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    s.smtp_server, s.smtp_port, local_hostname=helo,
                    timeout=s.smtp_timeout_s, context=self._context,
                )  # fmt: skip
            else:
                smtp = smtplib.SMTP(
                    s.smtp_server, s.smtp_port, local_hostname=helo, timeout=s.smtp_timeout_s
                )
            # smtplib closes the socket when its constructor fails, but nothing after it: a
            # refused login would leave the socket open for as long as its traceback lives.
            try:
                smtp.ehlo()
                if s.security == "starttls":
                    if not smtp.has_extn("starttls"):
                        raise smtplib.SMTPNotSupportedError(
                            f"{s.smtp_server}:{s.smtp_port} does not offer STARTTLS; "
                            "refusing to continue in clear text (SMTP_SECURITY=starttls)"
                        )
                    smtp.starttls(context=self._context)
                    smtp.ehlo()
                if s.email_password and s.login:
                    smtp.login(s.login, s.email_password.get_secret_value())
            except BaseException:
                smtp.close()
                raise
        except ssl.SSLCertVerificationError as exc:
            raise TLSVerificationError(
                f"certificate of {s.smtp_server}:{s.smtp_port} ({s.security}) did not verify "
                f"({exc.verify_message}); add its CA with SMTP_CA_FILE"
            ) from exc
        except OSError as exc:  # refused, timed out, no such host, TLS handshake, hung up
            replied = isinstance(exc, smtplib.SMTPException)  # or smtplib refused by itself
            if replied and not isinstance(exc, smtplib.SMTPServerDisconnected):
                raise  # classify() words these
            where = {"server": s.smtp_server, "port": s.smtp_port, "security": s.security}
            raise connect_failed(exc, **where) from exc
        with self._lock:
            self.opened += 1
        log.debug("connected to %s:%s (%s)", s.smtp_server, s.smtp_port, s.security)
        return smtp

    def _checkout(self) -> _Connection:
        """An idle usable connection, else a new one under the cap, else wait for either."""
        cap = self._settings.smtp_max_connections
        while True:
            with self._available:
                self._waiting += 1  # seen by streams holding a connection (``contended``)
                try:
                    self._available.wait_for(lambda: self._idle or self._open < cap)
                except BaseException:  # e.g. a time limit (gevent.Timeout) while waiting:
                    self._available.notify()  # pass on a wake-up this thread may have taken
                    raise
                finally:
                    self._waiting -= 1
                if not self._idle:
                    self._open += 1  # the slot is taken before connecting, outside the lock
                    break
                conn = self._idle.pop()
                if conn.usable():
                    return conn
            self._retire(conn)  # stale: QUIT outside the lock, then look again
        try:
            return _Connection(self.connect())
        except BaseException:
            self._free_slot()
            raise

    def lease(self) -> _Connection:
        """A connection for one thread's exclusive use, until ``give_back`` or ``discard``."""
        return self._checkout()

    def give_back(self, conn: _Connection) -> None:
        """Return a leased connection that is between transactions."""
        self._checkin(conn)

    def discard(self, conn: _Connection) -> None:
        """Close a leased connection in an unknown state, without a word to the server."""
        self._retire(conn, polite=False)

    @property
    def contended(self) -> bool:
        """Another thread is asking for a connection."""
        return self._waiting > 0

    def _checkin(self, conn: _Connection) -> None:
        conn.last_used = time.monotonic()
        if not conn.usable():
            self._retire(conn)
            return
        with self._available:
            self._idle.append(conn)
            self._available.notify()  # one connection serves one waiter

    def _retire(self, conn: _Connection, *, polite: bool = True) -> None:
        """Close a connection out of the pool, then free its slot. Call without the lock."""
        try:
            if polite:
                conn.close()
            else:
                conn.discard()
        finally:
            self._free_slot()

    def _free_slot(self) -> None:
        with self._available:
            self._open -= 1
            self._available.notify()

    def send(
        self, message: EmailMessage | bytes, *, sender: str, recipients: list[str]
    ) -> SendResult:
        """Send one message. Raises smtplib errors; partial refusals come back in the result."""
        data = message if isinstance(message, bytes) else message.as_bytes(policy=policy.SMTP)
        for _ in range(2):
            conn = self._checkout()
            try:
                result = self._transaction(conn, data, sender, recipients)
            except StaleConnection:
                self._retire(conn, polite=False)
                continue  # nothing was sent: the server hung up before MAIL FROM
            except BaseException:
                self._retire(conn, polite=False)
                raise
            conn.sent += 1
            self._checkin(conn)
            return result
        raise smtplib.SMTPServerDisconnected("server closed two connections before MAIL FROM")

    def _transaction(
        self, conn: _Connection, data: bytes, sender: str, recipients: list[str]
    ) -> SendResult:
        smtp = conn.smtp
        pipelining = smtp.has_extn("pipelining")
        if pipelining and len(recipients) <= MAX_PIPELINED_RECIPIENTS:
            return pipelined(conn, data, sender, recipients)
        code, reply = mail_reply(conn, lambda: smtp.mail(sender))
        if code != 250:
            raise smtplib.SMTPSenderRefused(code, reply, sender)
        if pipelining:  # many recipients: RCPTs in groups, not one round trip each
            replies = rcpt_groups(smtp, recipients)
        else:
            replies = [smtp.rcpt(r) for r in recipients]
        accepted, refused = sort_replies(recipients, replies)
        if not accepted:
            smtp.rset()
            raise smtplib.SMTPRecipientsRefused(
                {r: (c, t.encode()) for r, (c, t) in refused.items()}
            )
        code, reply = smtp.data(data)
        if code != 250:
            smtp.rset()
            raise smtplib.SMTPDataError(code, reply)
        return SendResult(tuple(accepted), refused, (code, reply.decode("utf-8", "replace")))

    def close(self) -> None:
        """QUIT every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            self._retire(conn)
