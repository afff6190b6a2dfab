"""The one decision: is a failure transient, permanent, or a configuration problem?"""

import re
import smtplib
import socket
import ssl
from collections.abc import Collection

from emailq.core.errors import (
    AuthenticationFailed,
    ConfigurationError,
    ConnectFailed,
    DeliveryError,
    PermanentError,
    TransientError,
)

# RFC 3463: class.subject.detail at the start of the reply text, e.g. "5.1.1 User unknown".
ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")  # not "4.2.2.1 listed"
# 530 auth required, 534 mechanism too weak, 535 credentials invalid; 5.7.8 is 535's
# enhanced code. Wrong credentials are the operator's to fix, not the job's fault.
AUTH_CODES = frozenset({530, 534, 535})

Outcome = type[TransientError] | type[PermanentError] | type[AuthenticationFailed]


def classify_reply(code: int, text: str, *, stage: str) -> Outcome:
    """Classify one SMTP reply. ``stage`` is ``mail``, ``rcpt``, ``data`` or ``connect``."""
    enhanced = ENHANCED.match(text or "")
    if code in AUTH_CODES or (enhanced and enhanced.groups() == ("5", "7", "8")):
        return AuthenticationFailed
    if enhanced:  # the enhanced code is more specific than the basic one: it wins
        return TransientError if enhanced.group(1) == "4" else PermanentError
    if code == 552 and stage == "rcpt":
        # RFC 5321 4.5.3.1.10: treat 552 at RCPT (too many recipients, storage) as 452.
        return TransientError
    if 400 <= code < 500:
        return TransientError
    if 500 <= code < 600:
        return PermanentError
    return TransientError  # no or garbled reply: the conversation broke, try again


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


def classify(
    exc: BaseException, *, hidden: Collection[str] = ()
) -> DeliveryError | ConfigurationError | None:
    """Map a send failure onto the error tree; ``None`` means a bug, not a delivery failure.

    Recipients in ``hidden`` (Bcc) are counted in the message, not named.

    smtplib's exceptions subclass ``OSError``, so they are matched before any
    network error: a blanket ``OSError`` rule would retry a 550 forever.
    """
    match exc:
        case DeliveryError() | ConfigurationError():
            return exc
        case smtplib.SMTPRecipientsRefused():
            refused = {r: (c, _text(t)) for r, (c, t) in exc.recipients.items()}
            kinds = {classify_reply(c, t, stage="rcpt") for c, t in refused.values()}
            code, text = next(iter(refused.values()), (None, ""))
            if AuthenticationFailed in kinds:
                return AuthenticationFailed(
                    f"SMTP login required or refused at RCPT ({code} {text}): check "
                    "SMTP_USERNAME (or EMAIL_ADDRESS) and EMAIL_PASSWORD",
                    smtp_code=code,
                    smtp_text=text,
                )
            kind = TransientError if TransientError in kinds else PermanentError
            return kind.refusing(refused, hidden=hidden, verb="refused")
        case smtplib.SMTPResponseException():
            stage = {
                smtplib.SMTPSenderRefused: "mail",
                smtplib.SMTPDataError: "data",
                smtplib.SMTPConnectError: "connect",
            }.get(type(exc), "other")
            text = _text(exc.smtp_error)
            kind = classify_reply(exc.smtp_code, text, stage=stage)
            message = f"{stage}: {exc.smtp_code} {text}"
            if kind is AuthenticationFailed:
                message = (
                    f"SMTP login refused ({exc.smtp_code} {text}): check SMTP_USERNAME "
                    "(or EMAIL_ADDRESS) and EMAIL_PASSWORD"
                )
            return kind(message, smtp_code=exc.smtp_code, smtp_text=text)
        case smtplib.SMTPNotSupportedError() if "SMTP AUTH" in str(exc):  # from SMTP.login
            return ConfigurationError(
                "EMAIL_PASSWORD is set but the server offers no login (SMTP AUTH): check "
                "SMTP_SERVER/SMTP_PORT (they win over SMTP_PROVIDER), or unset EMAIL_PASSWORD"
            )
        case smtplib.SMTPNotSupportedError():
            return ConfigurationError(f"SMTP_SECURITY/SMTP_SERVER: {exc}")
        case smtplib.SMTPServerDisconnected():
            return TransientError(f"server disconnected: {exc}")
        case smtplib.SMTPException():
            # smtplib's own refusals without a reply, e.g. "No suitable authentication method".
            return ConfigurationError(f"SMTP_SERVER/SMTP_USERNAME: {exc}")
        case ssl.SSLCertVerificationError():
            return ConfigurationError(f"SMTP_CA_FILE: certificate did not verify: {exc}")
        case OSError():  # mid-session: SMTPSender.connect raises ConnectFailed (below) itself
            return TransientError(f"SMTP connection lost: {_cause(exc)}")
    return None


def connect_failed(exc: OSError, *, server: str, port: int, security: str) -> ConnectFailed:
    """The error for a relay that could not be reached, naming it: where and how we tried."""
    match exc:
        case socket.gaierror():
            hint = "check SMTP_SERVER"
        case ssl.SSLError():
            hint = "check that SMTP_SECURITY suits the port (ssl for 465, starttls for 587)"
        case _:
            hint = "check SMTP_SERVER and SMTP_PORT"
    return ConnectFailed(f"cannot connect to {server}:{port} ({security}): {_cause(exc)}; {hint}")


def _cause(exc: OSError) -> str:
    """What went wrong on the network, in words."""
    match exc:
        case socket.gaierror():
            return f"the name does not resolve ({exc.strerror or exc})"
        case ssl.SSLError():
            return f"TLS handshake failed ({getattr(exc, 'reason', None) or exc})"
        case TimeoutError():
            return "timed out (no reply within SMTP_TIMEOUT_S)"
        case smtplib.SMTPServerDisconnected():
            return f"the server closed the connection ({exc})"
    words = exc.strerror or str(exc) or type(exc).__name__
    return words[:1].lower() + words[1:]  # "Connection refused" -> "connection refused"
