"""The SMTP conversation with ESMTP PIPELINING (RFC 2920): what goes in one write, and how
the replies that come back are read and sorted.

``emailq.worker.sender`` sends one message per transaction with these; a bulk chunk's
``emailq.worker.stream`` chains messages, one's end of data with the next envelope.
"""

import re
import smtplib
from collections.abc import Callable
from dataclasses import dataclass, field
from smtplib import quoteaddr
from typing import Protocol

MAX_PIPELINED_RECIPIENTS = 100
LEADING_DOT = re.compile(rb"(?m)^\.")


class Session(Protocol):
    """A pooled SMTP session (``emailq.worker.sender``): its connection, and whether it has
    carried a message yet (a fresh one that fails was never usable)."""

    smtp: smtplib.SMTP

    @property
    def fresh(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the server said: accepted recipients, and refused ones with their reply."""

    accepted: tuple[str, ...]
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)
    reply: tuple[int, str] = (250, "")


def pipelined(conn: Session, data: bytes, sender: str, recipients: list[str]) -> SendResult:
    """RFC 2920: MAIL, every RCPT and DATA in one write, then their replies in order.

    The same outcomes as the step-by-step transaction, in two round trips instead of
    3 + n. A DATA accepted despite refusals is never answered with a message: the
    error discards the connection.
    """
    smtp = conn.smtp
    group = envelope(sender, recipients)

    def write_group() -> tuple[int, bytes]:
        smtp.send(group)
        return smtp.getreply()

    accepted, refused = envelope_replies(smtp, mail_reply(conn, write_group), sender, recipients)
    smtp.send(dot_stuffed(data))
    return final_reply(smtp, accepted, refused)


def rcpt_groups(smtp: smtplib.SMTP, recipients: list[str]) -> list[tuple[int, bytes]]:
    """RCPTs written ``MAX_PIPELINED_RECIPIENTS`` at a time, each group's replies read before
    the next group is written.

    RFC 2920 3.1: a group larger than what both ends buffer could deadlock them; groups
    of this size cost a 1,000-recipient message 10 round trips for its RCPTs, not 1,000.
    """
    replies: list[tuple[int, bytes]] = []
    size = MAX_PIPELINED_RECIPIENTS
    for start in range(0, len(recipients), size):
        group = [f"rcpt TO:{quoteaddr(r)}" for r in recipients[start : start + size]]
        if any("\r" in line or "\n" in line for line in group):
            raise ValueError("command and arguments contain prohibited newline characters")
        smtp.send("".join(f"{line}\r\n" for line in group))
        replies += [smtp.getreply() for _ in group]
    return replies


def envelope(sender: str, recipients: list[str]) -> str:
    """MAIL, one RCPT per recipient and DATA, as one pipelined group."""
    group = [f"mail FROM:{quoteaddr(sender)}", *(f"rcpt TO:{quoteaddr(r)}" for r in recipients)]
    group.append("data")
    if any("\r" in line or "\n" in line for line in group):
        raise ValueError("command and arguments contain prohibited newline characters")
    return "".join(f"{line}\r\n" for line in group)


def envelope_replies(
    smtp: smtplib.SMTP, mail: tuple[int, bytes], sender: str, recipients: list[str]
) -> tuple[list[str], dict[str, tuple[int, str]]]:
    """The replies to a pipelined group after MAIL's: raises unless DATA got its 354."""
    code, reply = mail
    if code != 250:
        drain_replies(smtp, len(recipients) + 1)
        raise smtplib.SMTPSenderRefused(code, reply, sender)
    accepted, refused = sort_replies(recipients, [smtp.getreply() for _ in recipients])
    code, reply = smtp.getreply()
    if not accepted:
        if code != 354:
            smtp.rset()
        raise smtplib.SMTPRecipientsRefused({r: (c, t.encode()) for r, (c, t) in refused.items()})
    if code != 354:
        raise smtplib.SMTPDataError(code, reply)
    return accepted, refused


def final_reply(
    smtp: smtplib.SMTP, accepted: list[str], refused: dict[str, tuple[int, str]], *,
    rset: bool = True,
) -> SendResult:  # fmt: skip
    """The reply to the end of a message's data. ``rset`` false: more commands are in flight."""
    code, reply = smtp.getreply()
    if code != 250:
        if rset:
            smtp.rset()
        raise smtplib.SMTPDataError(code, reply)
    return SendResult(tuple(accepted), refused, (code, reply.decode("utf-8", "replace")))


def mail_reply(conn: Session, mail: Callable[[], tuple[int, bytes]]) -> tuple[int, bytes]:
    """The reply to MAIL. A reused connection the server already closed is stale: nothing sent."""
    try:
        code, reply = mail()
    except smtplib.SMTPServerDisconnected:
        if conn.fresh:
            raise
        raise StaleConnection from None
    if code == 421 and not conn.fresh:
        raise StaleConnection
    return code, reply


def sort_replies(
    recipients: list[str], replies: list[tuple[int, bytes]]
) -> tuple[list[str], dict[str, tuple[int, str]]]:
    """Accepted recipients, and refused ones with their reply, from the RCPT replies."""
    accepted: list[str] = []
    refused: dict[str, tuple[int, str]] = {}
    for rcpt, (code, reply) in zip(recipients, replies, strict=True):
        if code in (250, 251):
            accepted.append(rcpt)
        else:
            refused[rcpt] = (code, reply.decode("utf-8", "replace"))
    return accepted, refused


def drain_replies(smtp: smtplib.SMTP, replies: int) -> None:
    """Read the replies still due, up to a hang-up."""
    try:
        for _ in range(replies):
            smtp.getreply()
    except smtplib.SMTPServerDisconnected:
        pass


def dot_stuffed(data: bytes) -> bytes:
    """The DATA body exactly as smtplib.SMTP.data sends bytes: leading dots doubled, CRLF.CRLF."""
    body = LEADING_DOT.sub(b"..", data)
    if body[-2:] != b"\r\n":
        body += b"\r\n"
    return body + b".\r\n"


class StaleConnection(Exception):
    """A reused connection was closed by the server before this job sent anything."""
