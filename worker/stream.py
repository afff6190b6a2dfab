"""Several messages on one connection, each envelope written with the previous message's data.

RFC 2920 3.1 lets a client pipeline across transactions: the end of one message's data
(CRLF.CRLF) and the next message's MAIL, RCPT and DATA go out in one write, and the
replies are read in order. A chunk's jobs then cost one round trip each instead of two.

Every job is still its own transaction: its lock is taken before its envelope is
written, its outcome is judged from its own replies and recorded as soon as its final
reply is read (``emailq.worker.delivery.finish``). A refusal settles that job alone and
closes the connection, as a single send does; a 4xx/5xx after the data ends only that
transaction, so the envelope already written behind it goes on. Anything unusual (no
PIPELINING, many recipients, a connection lost before a job's data went out) sends that
job the per-message way (``emailq.worker.delivery.send_one``).
"""

import logging
import smtplib
from collections.abc import Callable
from typing import Any

from emailq.worker import sender as smtp_sender
from emailq.worker.delivery import Ready, finish, send_one
from emailq.worker.pipelining import (
    MAX_PIPELINED_RECIPIENTS,
    StaleConnection,
    dot_stuffed,
    envelope,
    envelope_replies,
    final_reply,
    mail_reply,
)
from emailq.worker.sender import SMTPSender, _Connection

log = logging.getLogger(__name__)

# settle(key, outcome): the job's report, or the exception it ended with. Called in order.
Settle = Callable[[Any, dict[str, Any] | Exception], None]
REFUSED = (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused)  # a reply, not a hang-up


class Stream:
    """One thread's jobs over one leased connection, settled in the order they were given.

    ``send`` each prepared job, then ``flush`` the last one, and ``close`` in any case:
    a job whose envelope was written but whose data never went out is let go unrecorded.
    """

    def __init__(self, sender: SMTPSender, settle: Settle) -> None:
        self.sender = sender
        self.settle = settle
        self.conn: _Connection | None = None
        self.open: tuple[Any, Ready, list[str], dict] | None = None  # its 354 read, data not sent
        self.held: list[Ready] = []  # jobs whose lock is still the stream's to record or let go
        self.plain = False  # the server offers no PIPELINING

    def send(self, key: Any, ready: Ready) -> None:
        """Write ``ready``'s envelope (behind the open job's data); settle whatever completes."""
        envelope = None if self.plain else _group(ready)
        if envelope is None:
            self.flush()
            self._plain(key, ready)
            return
        self.held.append(ready)
        if self.open is None:
            self._start(key, ready, envelope)
        elif self._room():
            self._chain(key, ready, envelope)
        else:  # the session's message cap, or another thread waits for a connection
            self.flush()
            self._give_back()
            self._start(key, ready, envelope)

    def flush(self) -> None:
        """Send the open job's data on its own and settle it."""
        if self.open is None:
            return
        key, ready, accepted, refused = self.open
        conn = self.conn
        assert conn is not None
        self.open = None
        try:
            conn.smtp.send(dot_stuffed(ready.message))
            conn.sent += 1
            result = final_reply(conn.smtp, accepted, refused)
        except Exception as exc:
            self._drop()  # as after any failed transaction
            self._done(key, ready, error=exc)
        else:
            self._done(key, ready, result=result)

    def close(self) -> None:
        """Return the connection; with a job still in flight, drop it and let the job go."""
        left, self.held, self.open = self.held, [], None
        if left:
            self._drop()  # the server discards a transaction whose data never ended
        else:
            self._give_back()
        for ready in left:
            try:
                ready.release()
            except Exception:  # noqa: BLE001 - Redis away: the lock expires on its own
                log.warning("job %s: lock not released; it expires on its own", ready.job_id)

    def _start(self, key: Any, ready: Ready, envelope: bytes) -> None:
        """The first envelope on a connection: as the per-message path's first write."""
        for _ in range(2):
            try:
                conn = self._lease()
            except Exception as exc:  # cannot connect: judged as the single send would be
                self._done(key, ready, error=exc)
                return
            if conn is None:
                self._plain(key, ready)
                return

            def write_group(smtp: smtplib.SMTP = conn.smtp) -> tuple[int, bytes]:
                smtp.send(envelope)
                return smtp.getreply()

            try:
                mail = mail_reply(conn, write_group)
                accepted, refused = envelope_replies(
                    conn.smtp, mail, ready.envelope_from, ready.pending
                )
            except StaleConnection:
                self._drop()
                continue  # nothing was sent: the server hung up before MAIL FROM
            except Exception as exc:
                self._drop()
                self._done(key, ready, error=exc)
                return
            self.open = (key, ready, accepted, refused)
            return
        error = smtplib.SMTPServerDisconnected("server closed two connections before MAIL FROM")
        self._done(key, ready, error=error)

    def _chain(self, key: Any, ready: Ready, envelope: bytes) -> None:
        """The open job's data and ``ready``'s envelope in one write; then their replies."""
        assert self.open is not None and self.conn is not None
        prev_key, prev, accepted, refused = self.open
        conn = self.conn
        self.open = None
        try:
            conn.smtp.send(dot_stuffed(prev.message) + envelope)
            conn.sent += 1
            result = final_reply(conn.smtp, accepted, refused, rset=False)
        except REFUSED as exc:  # this transaction is over; the next one is already on its way
            self._done(prev_key, prev, error=exc)
        except Exception as exc:  # the connection is gone, and with it ``ready``'s envelope
            self._drop()
            self._done(prev_key, prev, error=exc)
            self._plain(key, ready)
            return
        else:
            self._done(prev_key, prev, result=result)
        try:
            mail = conn.smtp.getreply()
            if mail[0] == 421:  # closing: nothing of this message went out
                raise smtplib.SMTPServerDisconnected("421 to MAIL FROM")
            accepted, refused = envelope_replies(
                conn.smtp, mail, ready.envelope_from, ready.pending
            )
        except REFUSED as exc:
            self._drop()  # as the per-message path does after a refusal
            self._done(key, ready, error=exc)
            return
        except Exception:  # a hang-up before this message's data: send it the usual way
            self._drop()
            self._plain(key, ready)
            return
        self.open = (key, ready, accepted, refused)

    def _plain(self, key: Any, ready: Ready) -> None:
        """The per-message path, on a connection of its own from the pool."""
        self._give_back()  # never hold one connection while waiting for another
        self._let_go(ready)
        try:
            outcome: dict[str, Any] | Exception = send_one(ready, self.sender)
        except Exception as exc:
            outcome = exc
        self.settle(key, outcome)

    def _done(self, key: Any, ready: Ready, **sent: Any) -> None:
        """Judge and record ``ready`` (``finish`` owns its lock from here), then settle it."""
        self._let_go(ready)
        try:
            outcome: dict[str, Any] | Exception = finish(ready, **sent)
        except Exception as exc:
            outcome = exc
        self.settle(key, outcome)

    def _let_go(self, ready: Ready) -> None:
        if ready in self.held:
            self.held.remove(ready)

    def _room(self) -> bool:
        """The open job's connection can take one more message after it, and nobody waits."""
        assert self.conn is not None
        full = self.conn.sent + 2 > smtp_sender.MAX_MESSAGES_PER_CONNECTION
        return not full and not self.sender.contended

    def _lease(self) -> _Connection | None:
        """The stream's connection, leased if need be; None when it offers no PIPELINING."""
        if self.conn is None:
            self.conn = self.sender.lease()
        if not self.conn.smtp.has_extn("pipelining"):
            self.plain = True
            self._give_back()
            return None
        return self.conn

    def _give_back(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            self.sender.give_back(conn)

    def _drop(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            self.sender.discard(conn)


def _group(ready: Ready) -> bytes | None:
    """``ready``'s MAIL, RCPT and DATA as bytes; None when it goes the per-message way."""
    if not ready.pending or len(ready.pending) > MAX_PIPELINED_RECIPIENTS:
        return None
    try:
        return envelope(ready.envelope_from, ready.pending).encode("ascii")
    except (ValueError, UnicodeError):  # the per-message path raises it as it always has
        return None
