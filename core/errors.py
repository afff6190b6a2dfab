"""The one error tree. Each class says what happens next.

``ConfigurationError`` deliberately sits outside ``DeliveryError``: retry code
catches ``TransientError`` and dead-letter code catches ``PermanentError``, so
neither can swallow a mistake in the settings, which no amount of retrying fixes.

The root (``EmailQError``) and ``ConfigurationError`` live in ``emailq.config.errors``,
because settings raise them and ``config`` imports nothing of ours; they are the same
classes here.
"""

from collections.abc import Collection
from typing import Self

from emailq.config.errors import ConfigurationError, EmailQError

__all__ = [
    "AuthenticationFailed", "BrokerUnavailable", "CircuitOpen", "ConfigurationError",
    "ConnectFailed", "DeliveryError", "RelayUnavailable",
    "EmailQError", "InvalidEmail", "JobBusy", "JobExpired", "PermanentError", "QueueFull",
    "RateLimited", "TLSVerificationError", "TransientError",
]  # fmt: skip


class InvalidEmail(EmailQError, ValueError):
    """The producer refused a job's input; nothing was published."""


class BrokerUnavailable(EmailQError, ConnectionError):
    """Redis (REDIS_URL) could not take the job in time (within 2 s); retry later."""

    @classmethod
    def at(cls, redis_url: str, reason: object) -> "BrokerUnavailable":
        """The error for ``redis_url``, its password masked: messages end up in logs."""
        return cls(
            f"cannot reach Redis at REDIS_URL={_sanitized_url(redis_url)} ({reason}); "
            "the job was not queued: retry once Redis is back, or fix REDIS_URL"
        )


class QueueFull(BrokerUnavailable):
    """Redis is above REDIS_SOFT_LIMIT_PERCENT of maxmemory; nothing was published, retry later.

    A ``BrokerUnavailable`` (so one ``except`` covers "try again later"), not bad input:
    the producers stop short of a full Redis so that workers, which need memory for their
    own bookkeeping to drain the queues, keep working.
    """

    def __init__(self, used_percent: float, limit_percent: float) -> None:
        super().__init__(
            f"Redis memory use is {used_percent:.0f}% of maxmemory, above "
            f"REDIS_SOFT_LIMIT_PERCENT={limit_percent:g}; nothing was published. Workers are "
            "draining the queues: retry later, or raise Redis's maxmemory"
        )
        self.used_percent = used_percent
        self.limit_percent = limit_percent

    def __reduce__(self) -> tuple:  # the two numbers, not the message, rebuild it
        return type(self), (self.used_percent, self.limit_percent)


def _sanitized_url(url: str) -> str:
    """``url`` with its passwords masked; ``sentinel://`` lists are masked part by part."""
    from kombu.utils.url import maybe_sanitize_url  # kombu loads on first use, not on import

    masked = []
    for part in url.split(";"):
        try:
            masked.append(maybe_sanitize_url(part.strip()))
        except ValueError:  # unparsable: show the scheme only, never the raw text
            masked.append(part.partition("://")[0] + "://?")
    return ";".join(masked)


MAX_NAMED = 5  # recipients named in one error message; the dead-letter entry lists them all


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


class _SMTPReply:
    """Carries the last SMTP reply and the recipients it concerned."""

    def __init__(
        self,
        message: str,
        *,
        smtp_code: int | None = None,
        smtp_text: str | None = None,
        recipients: dict[str, tuple[int, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.smtp_code = smtp_code
        self.smtp_text = smtp_text
        self.recipients = recipients or {}


class DeliveryError(_SMTPReply, EmailQError):
    """Sending failed; carries the last SMTP reply and the recipients affected."""

    turned_away = "refused"  # what happened to the recipients a message of this kind names

    @classmethod
    def refusing(
        cls, recipients: dict[str, tuple[int, str]], *, hidden: Collection[str] = (),
        verb: str | None = None,
    ) -> Self:  # fmt: skip
        """The error for ``recipients``, each named in the message with the server's reply.

        Addresses in ``hidden`` (Bcc) are counted, not named: the message is kept as the
        task's result, which Flower shows.
        """
        code, text = next(iter(recipients.values()), (None, None))
        named = [f"{r} ({c} {t})" for r, (c, t) in recipients.items() if r not in hidden]
        parts = named[:MAX_NAMED]
        if len(named) > MAX_NAMED:
            parts.append(f"{len(named) - MAX_NAMED} more")
        if bcc := len(recipients) - len(named):
            parts.append(_count(bcc, "Bcc recipient"))
        shown = " and ".join([", ".join(parts[:-1]), parts[-1]] if len(parts) > 1 else parts)
        message = f"{_count(len(recipients), 'recipient')} {verb or cls.turned_away}: {shown}"
        return cls(message, smtp_code=code, smtp_text=text, recipients=dict(recipients))


class TransientError(DeliveryError):
    """May succeed later (4xx, disconnect, timeout); retried with backoff."""

    turned_away = "deferred"


class PermanentError(DeliveryError):
    """Cannot succeed as it stands (5xx); goes to the dead-letter queue."""

    turned_away = "refused permanently"


class ConnectFailed(TransientError, ConnectionError):
    """The SMTP relay could not be reached (refused, timeout, DNS, TLS handshake); retried."""


class AuthenticationFailed(_SMTPReply, ConfigurationError):
    """The SMTP server refused the login (535); retried with backoff, never dead-lettered."""


class JobBusy(EmailQError):
    """Another worker is delivering this job right now; look again when its lock ends."""

    def __init__(self, message: str, *, wait_s: float) -> None:
        super().__init__(message)
        self.wait_s = wait_s  # left on the other worker's lock, which it renews while alive


class RelayUnavailable(TransientError):
    """The SMTP relay could not be reached; deferred without spending the retry budget."""

    def __init__(self, message: str, *, wait_s: float) -> None:
        super().__init__(message)
        self.wait_s = wait_s


class CircuitOpen(EmailQError):
    """The relay's circuit is open after a run of connection failures; the job waits."""

    def __init__(self, wait_s: float, account: str) -> None:
        super().__init__(f"SMTP relay {account} is unreachable; held back for {wait_s:.0f}s")
        self.wait_s = wait_s


class JobExpired(EmailQError):
    """The job waited longer than MAX_JOB_AGE_S to go out; dead-lettered as expired."""


class RateLimited(EmailQError):
    """The SMTP account's send limit is used up for now; deferred, not a failure."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"SMTP_RATE_LIMIT reached; deferred {wait_s:.1f}s")
        self.wait_s = wait_s


class TLSVerificationError(ConfigurationError, ConnectionError):
    """The SMTP server's certificate did not verify; set SMTP_CA_FILE or fix the server."""
