"""The one error tree. Each class says what happens next.

``ConfigurationError`` deliberately sits outside ``DeliveryError``: retry code
catches ``TransientError`` and dead-letter code catches ``PermanentError``, so
neither can swallow a mistake in the settings, which no amount of retrying fixes.

The root (``EmailQError``) and ``ConfigurationError`` live in ``emailq.config.errors``,
because settings raise them and ``config`` imports nothing of ours; they are the same
classes here.
"""

from emailq.config.errors import ConfigurationError, EmailQError

__all__ = [
    "AuthenticationFailed", "ConfigurationError", "DeliveryError", "EmailQError", "InvalidEmail",
    "JobBusy", "PermanentError", "RateLimited", "TLSVerificationError", "TransientError",
]  # fmt: skip


class InvalidEmail(EmailQError, ValueError):
    """The producer refused a job's input; nothing was published."""


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


class TransientError(DeliveryError):
    """May succeed later (4xx, disconnect, timeout); retried with backoff."""


class PermanentError(DeliveryError):
    """Cannot succeed as it stands (5xx); goes to the dead-letter queue."""


class AuthenticationFailed(_SMTPReply, ConfigurationError):
    """The SMTP server refused the login (535); retried with backoff, never dead-lettered."""


class JobBusy(EmailQError):
    """Another worker is delivering this job right now; look again later."""


class RateLimited(EmailQError):
    """The SMTP account's send limit is used up for now; deferred, not a failure."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"SMTP_RATE_LIMIT reached; deferred {wait_s:.1f}s")
        self.wait_s = wait_s


class TLSVerificationError(ConfigurationError, ConnectionError):
    """The SMTP server's certificate did not verify; set SMTP_CA_FILE or fix the server."""
