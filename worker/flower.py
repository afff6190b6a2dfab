"""Flower's authentication rule, shipped in the package so it holds from any directory.

``celery -A emailq.worker flower`` imports this package after the Celery command line
has loaded Flower's plugin, so the rule hooks Flower's own option parsing: once the
options are final, Flower starts only with valid credentials (``FLOWER_BASIC_AUTH``
or ``FLOWER_AUTH``), or with ``FLOWER_INSECURE_NO_AUTH=true`` for local development.
Flower's ``/metrics`` handler has no authentication of its own; it is wrapped to need
the same credentials unless ``FLOWER_METRICS_PUBLIC=true`` opens it for a scraper.

``/metrics`` also serves our own figures (``emailq.worker.metrics``): the backlog, job
outcomes and the relay circuit, read from Redis at each scrape.

Flower's Broker page picks its Redis reader by the scheme of the broker URL, which kombu
derives from the transport: our transport class (``emailq.core.backends``) gave it one
Flower does not know, and the page answered 404. Flower is given ``REDIS_URL`` itself.
"""

import logging
import sys
from collections.abc import Iterable

from emailq.config import Settings, get_settings
from emailq.core.errors import ConfigurationError

log = logging.getLogger(__name__)


def check_credentials(entries: Iterable[str]) -> list[str]:
    """``user:password`` entries, each with a user and a password; never echoes a secret."""
    checked = []
    for position, entry in enumerate(entries, 1):
        user, colon, password = entry.partition(":")
        if not colon or not user.strip() or not password.strip():
            raise ConfigurationError(
                f"FLOWER_BASIC_AUTH: entry {position} is not user:password with both set; "
                "expected user:password[,user2:password2]"
            )
        checked.append(entry)
    if not checked:
        raise ConfigurationError("FLOWER_BASIC_AUTH: no user:password given")
    return checked


def enforce(options: object, settings: Settings) -> None:
    """Apply the rule to Flower's parsed options; raises ``ConfigurationError`` to refuse."""
    basic = list(getattr(options, "basic_auth", None) or [])
    if not basic and settings.flower_basic_auth is not None:  # from EMAILQ_ENV_FILE
        basic = settings.flower_basic_auth.get_secret_value().split(",")
    oauth = (getattr(options, "auth", None) or settings.flower_auth or "").strip()
    if basic:
        options.basic_auth = check_credentials(basic)  # type: ignore[attr-defined]
    elif oauth:
        options.auth = oauth  # type: ignore[attr-defined]
    elif settings.flower_insecure_no_auth:
        log.warning("Flower runs WITHOUT authentication (FLOWER_INSECURE_NO_AUTH=true)")
        return
    else:
        raise ConfigurationError(
            "FLOWER_BASIC_AUTH: Flower refuses to start without authentication; set "
            "FLOWER_BASIC_AUTH=user:password (or FLOWER_AUTH for OAuth)"
        )
    if not settings.flower_metrics_public:
        _protect_metrics()


def _protect_metrics() -> None:
    from flower.views.monitor import Metrics
    from tornado.web import authenticated

    if not getattr(Metrics.get, "_emailq_protected", False):
        Metrics.get = authenticated(Metrics.get)
        Metrics.get._emailq_protected = True  # type: ignore[attr-defined]


def _broker_urls(settings: Settings) -> None:
    from flower.app import Flower
    from kombu.utils.url import maybe_sanitize_url

    Flower.broker_uri = property(lambda _: maybe_sanitize_url(settings.redis_url))
    Flower.broker_uri_with_password = property(lambda _: settings.redis_url)


def _register_metrics(settings: Settings) -> None:
    from prometheus_client import REGISTRY

    from emailq.worker.metrics import Collector

    REGISTRY.register(Collector(settings))


def install() -> None:
    """Hook Flower's option parsing, when this process is running Flower."""
    if "flower.options" not in sys.modules:
        return
    from tornado.options import add_parse_callback, options

    settings = get_settings()
    _broker_urls(settings)
    _register_metrics(settings)

    def callback() -> None:
        try:
            enforce(options, get_settings())
        except ConfigurationError as exc:
            raise SystemExit(f"flower not started: {exc}") from None

    add_parse_callback(callback)
