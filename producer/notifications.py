"""The article's use cases, ready to call: verification links, alerts with a cooldown."""

from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from emailq.config import get_settings
from emailq.core.alerts import alert_job, cooling_down
from emailq.core.errors import ConfigurationError, EmailQError
from emailq.core.store import producer_client
from emailq.producer.publishing import unreachable_as_broker_unavailable
from emailq.producer.tasks import enqueue_email

VERIFY_SALT = "emailq.verify-email"  # separates these tokens from anything else signed


class InvalidToken(EmailQError, ValueError):
    """A verification token that is forged, damaged or for something else."""


class TokenExpired(InvalidToken):
    """A genuine verification token that is older than ``max_age``."""


def _serializer() -> URLSafeTimedSerializer:
    secret = get_settings().secret_key
    if secret is None:
        raise ConfigurationError(
            "EMAILQ_SECRET_KEY (or SECRET_KEY) must be set to sign verification links"
        )
    return URLSafeTimedSerializer(secret.get_secret_value(), salt=VERIFY_SALT)


def send_verification(
    email: str, username: str, base_url: str, *, product: str = "our service",
    valid_hours: int = 24,
) -> Any:  # fmt: skip
    """Send the registration confirmation with a signed, time-limited link."""
    token = _serializer().dumps(email)
    separator = "&" if "?" in base_url else "?"
    context = {
        "username": username, "product": product, "valid_hours": valid_hours,
        "verify_url": f"{base_url}{separator}token={token}",
    }  # fmt: skip
    return enqueue_email.delay(to=email, template="welcome", context=context)


def verify_token(token: str, max_age: int = 24 * 3600) -> str:
    """The email address a verification token was issued for."""
    try:
        return _serializer().loads(token, max_age=max_age)
    except SignatureExpired:
        raise TokenExpired(f"verification link expired (older than {max_age}s)") from None
    except BadSignature:
        raise InvalidToken("verification link is not valid") from None


def send_alert(
    check: str, host: str, value: str, threshold: str, *, to: list[str] | str,
    cooldown_s: int | None = None, severity: str = "critical",
) -> Any | None:  # fmt: skip
    """A high-priority alert, at most once per check and host within the cooldown.

    Returns the job's AsyncResult, or None when the alert is cooling down.
    """
    settings = get_settings()
    cooldown = settings.alert_cooldown_s if cooldown_s is None else cooldown_s
    with unreachable_as_broker_unavailable():  # the same 2 s promise as delay()
        if cooling_down(producer_client(), check, host, cooldown):
            return None
    job = alert_job(
        check, host, value, threshold, to=to, cooldown_s=cooldown, severity=severity,
        settings=settings,
    )  # fmt: skip
    return enqueue_email.publish(job)
