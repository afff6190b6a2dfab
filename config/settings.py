"""One typed, frozen settings object, read once from the environment (and ``EMAILQ_ENV_FILE``).

Nothing here depends on the working directory: no ``.env`` is read unless
``EMAILQ_ENV_FILE`` names it, relative paths are refused, and the files we write live
in ``EMAILQ_DATA_DIR``.
"""

import os
from email.headerregistry import Address
from email.utils import parseaddr
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from kombu.utils.url import maybe_sanitize_url
from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from emailq.config.errors import ConfigurationError
from emailq.config.providers import preset

Security = Literal["starttls", "ssl", "none"]

# Ports with a conventional security mode; every other port defaults to STARTTLS,
# so an unknown relay is never spoken to in clear text by accident.
PORT_SECURITY: dict[int, Security] = {465: "ssl", 1025: "none"}
LOOPBACK = {"localhost", "127.0.0.1", "::1"}
SECRET_FIELDS = {
    "email_password", "flower_basic_auth", "redis_url", "database_url", "secret_key",
    "emailq_database_url", "emailq_secret_key",
}  # fmt: skip
# Names shown in messages for fields read under another variable name.
ENV_NAMES = {
    "data_dir": "EMAILQ_DATA_DIR",
    "database_url": "EMAILQ_DATABASE_URL",
    "secret_key": "EMAILQ_SECRET_KEY",
}
SQLITE = "sqlite:///"
BROKER_SCHEMES = {"redis", "rediss", "sentinel"}
URL_FIELDS = {"redis_url", "database_url"}


class Settings(BaseSettings):
    """Every variable of the public contract. Secrets are ``SecretStr``: masked in repr."""

    model_config = SettingsConfigDict(
        env_file=None,  # only EMAILQ_ENV_FILE, never a .env in the working directory
        env_file_encoding="utf-8",
        populate_by_name=True,  # load_settings(data_dir=...) by field name
        env_ignore_empty=True,  # VAR= in compose or .env means "not set"
        frozen=True,
        extra="ignore",
    )

    redis_url: str = "redis://localhost:6379/0"
    redis_sentinel_master: str = "mymaster"  # the master's name, for sentinel:// URLs

    smtp_provider: str | None = None  # fills host, port and security; explicit values win
    smtp_server: str = "localhost"  # the development sink (`emailq sink`)
    smtp_port: int = 1025
    smtp_security: Security | None = None  # None: chosen from the port (PORT_SECURITY)
    # Added to the system CAs, never replaces verification. Absolute; the worker reads it
    # at start-up (an application that only enqueues need not have the file).
    smtp_ca_file: Path | None = None
    smtp_timeout_s: float = 30.0  # per SMTP command; providers can take seconds to answer DATA
    smtp_helo_name: str | None = None
    # Per host under `emailq worker` (split between its processes), per process for a plain
    # `celery worker`; providers cap concurrent sessions.
    smtp_max_connections: int = 32
    # Recipients per window for the SMTP account, across all workers: "10/second;500/day".
    # Unset: the provider preset's daily cap (Gmail 500/day), or no limit.
    smtp_rate_limit: str | None = None  # None: this host's name, without a DNS lookup

    email_address: str | None = None  # the article's name: login and default From
    email_password: SecretStr | None = None
    smtp_username: str | None = None  # login, when it differs from EMAIL_ADDRESS
    email_from: str | None = None  # From header, e.g. "Alerts <alerts@example.com>"

    # Every file we write (the SQLite store, the beat schedule) lives here, never in the
    # working directory, so an application and a worker started elsewhere agree.
    data_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir("emailq")),
        validation_alias="emailq_data_dir",
    )
    # Delivery tracking, read and written by workers and the CLI only. EMAILQ_DATABASE_URL
    # wins over DATABASE_URL, which Django and Heroku applications use for their own data.
    # Unset: SQLite in EMAILQ_DATA_DIR; a relative SQLite path is taken inside it too.
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("emailq_database_url", "database_url")
    )
    # Days a job's tracking rows are kept after its last change; beat prunes older ones
    # daily. A quarter covers audits and month-on-month stats; 0 keeps them for ever.
    tracking_retention_days: int = 90

    # Postfix's minimal_backoff_time (300 s) and maximal_backoff_time (4000 s): the
    # same spacing real MTAs use, well above RFC 5321 4.5.4.1's 30-minute floor once
    # jitter spreads retries out. Ten retries cover about nine hours of an outage.
    max_retries: int = 10
    retry_backoff_base_s: int = 300  # whole seconds: Celery's backoff works in integers
    retry_backoff_max_s: int = 4000
    retry_jitter: bool = True  # full jitter: retries of one outage spread over [0, backoff]

    # A job not sent after this long is dead-lettered as expired (Postfix's
    # maximal_queue_lifetime): deferrals that spend no budget would otherwise wait for ever.
    max_job_age_s: int = 5 * 24 * 3600
    # Unacknowledged jobs return to the queue after this. The job lock and the ledger make an
    # early redelivery harmless, so it is short: a crashed worker's jobs go out again within
    # VISIBILITY_TIMEOUT_S + LOCK_TTL_S (15 s) + the 5 s restore sweep.
    visibility_timeout_s: int = 300

    idempotency_window_s: int = 24 * 3600  # a repeated idempotency_key within this sends once
    # Producers refuse new jobs (QueueFull) above this share of Redis's maxmemory, so a full
    # Redis under noeviction never refuses the workers' own writes while they drain it.
    redis_soft_limit_percent: float = Field(default=80.0, gt=0, le=100)
    templates_dir: Path | None = None  # absolute; NAME.subject/.txt/.html, before the packaged ones
    max_attachment_bytes: int = 20 * 1024 * 1024  # 20 MiB: what most providers accept
    # Per body (text, html): far above any real notification, far below what would fill
    # Redis; a job is stored three times over (queue, result, dead letter) at worst.
    max_body_bytes: int = 2 * 1024 * 1024
    email_check_deliverability: bool = False  # DNS lookups on every address when True

    # Signs verification links; long and random. EMAILQ_SECRET_KEY wins over SECRET_KEY.
    secret_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("emailq_secret_key", "secret_key")
    )

    # System monitoring (celery beat): alert when a reading crosses its threshold.
    alert_to: Annotated[list[str], NoDecode] = []  # comma-separated addresses
    alert_cpu_percent: float = 90.0
    alert_memory_percent: float = 90.0
    alert_disk_percent: float = 90.0
    alert_disk_path: str = "/"
    alert_check_interval_s: float = 60.0
    alert_cooldown_s: int = 30 * 60  # one alert per check and host per half hour, fleet-wide
    # Scheduled delivery report (celery beat), daily at REPORT_HOUR UTC.
    report_to: Annotated[list[str], NoDecode] = []
    report_hour: int = 7

    flower_basic_auth: SecretStr | None = None  # "user:password[,user2:password2]"
    flower_auth: str | None = None  # Flower's own OAuth allow-list (FLOWER_AUTH), instead
    flower_insecure_no_auth: bool = False  # development only: Flower without a password
    # Flower's /metrics needs the dashboard's credentials; true opens it to any scraper.
    flower_metrics_public: bool = False

    @model_validator(mode="before")
    @classmethod
    def _apply_provider(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("smtp_provider"):
            return data
        try:
            chosen = preset(str(data["smtp_provider"]))
        except ValueError as exc:
            raise ValueError(f"smtp_provider: {exc}") from None
        data = dict(data)
        data.setdefault("smtp_server", chosen.host)
        if "smtp_port" not in data:  # an explicit port picks its own security mode
            data["smtp_port"] = chosen.port
            data.setdefault("smtp_security", chosen.security)
        return data

    @field_validator("redis_url")
    @classmethod
    def _broker_url(cls, url: str) -> str:
        scheme = url.partition("://")[0]
        if scheme not in BROKER_SCHEMES:
            raise ValueError(f"expected a URL starting with one of {sorted(BROKER_SCHEMES)}://")
        return url

    @field_validator("data_dir", "smtp_ca_file", "templates_dir")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        # A relative path would mean something different in every working directory.
        if path is not None and not path.expanduser().is_absolute():
            raise ValueError(f"{str(path)!r} is relative; give an absolute path")
        return path.expanduser() if path is not None else None

    @field_validator("alert_to", "report_to", mode="before")
    @classmethod
    def _address_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("smtp_rate_limit")
    @classmethod
    def _rate_limit(cls, spec: str | None) -> str | None:
        if spec:
            from limits import parse_many

            try:
                parse_many(spec)
            except ValueError:
                raise ValueError(f"{spec!r} is not a rate like '10/second;500/day'") from None
        return spec

    @field_validator("smtp_port")
    @classmethod
    def _port_range(cls, port: int) -> int:
        if not 0 < port < 65536:
            raise ValueError(f"{port} is not a TCP port (1-65535)")
        return port

    @field_validator(
        "smtp_timeout_s", "retry_backoff_base_s", "retry_backoff_max_s", "visibility_timeout_s"
    )
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value

    @field_validator("smtp_max_connections")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be 1 or more")
        return value

    @field_validator(
        "max_retries", "max_attachment_bytes", "max_body_bytes", "tracking_retention_days"
    )
    @classmethod
    def _not_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be 0 or more")
        return value

    @field_validator("email_address", "email_from")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if any(c in value for c in "\r\n\0"):
            raise ValueError("contains a line break or NUL")
        _, addr = parseaddr(value)
        if "@" not in addr:
            raise ValueError(f"'{value}' is not an email address")
        return value.strip()

    @model_validator(mode="after")
    def _credentials_need_encryption(self) -> "Settings":
        remote = self.smtp_server not in LOOPBACK
        if self.email_password and self.security == "none" and remote:
            raise ValueError(
                "email_password: SMTP_SECURITY=none would send EMAIL_PASSWORD in clear "
                f"text to {self.smtp_server}; use starttls or ssl"
            )
        if self.email_password and not self.login:
            raise ValueError(
                "smtp_username: EMAIL_PASSWORD is set but no SMTP_USERNAME or EMAIL_ADDRESS"
            )
        return self

    def __repr_args__(self):  # URLs can carry passwords: mask them like the SecretStr fields
        for name, value in super().__repr_args__():
            yield name, maybe_sanitize_url(value) if name in URL_FIELDS and value else value

    @property
    def tracking_url(self) -> str:
        """The tracking store's URL: DATABASE_URL, else SQLite in EMAILQ_DATA_DIR."""
        url = self.database_url or f"{SQLITE}emailq.sqlite3"
        if url.startswith(SQLITE) and url != f"{SQLITE}:memory:":
            path = Path(url.removeprefix(SQLITE))
            if not path.is_absolute():
                return f"{SQLITE}{self.data_dir / path}"
        return url

    @property
    def security(self) -> Security:
        """The SMTP security mode, explicit or from the port."""
        return self.smtp_security or PORT_SECURITY.get(self.smtp_port, "starttls")

    @property
    def rate_limit(self) -> str | None:
        """SMTP_RATE_LIMIT, else the provider's daily cap."""
        if self.smtp_rate_limit:
            return self.smtp_rate_limit
        limit = preset(self.smtp_provider).daily_limit if self.smtp_provider else None
        return f"{limit}/day" if limit else None

    @property
    def login(self) -> str | None:
        return self.smtp_username or self.email_address

    @property
    def sender(self) -> Address:
        """The From address: EMAIL_FROM, else EMAIL_ADDRESS."""
        raw = self.email_from or self.email_address
        if not raw:
            raise ConfigurationError("EMAIL_FROM or EMAIL_ADDRESS must be set to send email")
        return _address(raw)


@cache
def _address(raw: str) -> Address:
    # Parsed once per text: a worker asks for the From address several times per job.
    name, addr = parseaddr(raw)
    return Address(display_name=name, addr_spec=addr)


def _describe(error: dict[str, Any]) -> str:
    field = str(error["loc"][0]) if error["loc"] else ""
    message = error["msg"].removeprefix("Value error, ")
    # Model-level checks name their variable as "field: message"; their input is
    # the whole settings dict, secrets included, so it is never shown.
    shown = "" if not field or field in SECRET_FIELDS else f" (got {error.get('input')!r})"
    if ":" in message and message.split(":", 1)[0] in Settings.model_fields:
        field, message = (part.strip() for part in message.split(":", 1))
    name = ENV_NAMES.get(field, field.upper()) or "settings"
    return f"{name}: {message}{shown}"


def load_settings(**overrides: Any) -> Settings:
    """Build settings; validation errors become one ConfigurationError naming each variable."""
    env_file = overrides.pop("_env_file", None) or os.environ.get("EMAILQ_ENV_FILE") or None
    if env_file is not None:
        path = Path(env_file).expanduser()
        if not path.is_absolute():  # it would name a different file in every directory
            raise ConfigurationError(
                f"EMAILQ_ENV_FILE: {str(path)!r} is relative; give an absolute path"
            )
        if str(path) != os.devnull and not path.is_file():
            raise ConfigurationError(f"EMAILQ_ENV_FILE: no such file: {str(path)!r}")
        env_file = path
    try:
        return Settings(_env_file=env_file, **overrides)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors(include_url=False)]
        raise ConfigurationError("invalid configuration: " + "; ".join(lines)) from None


@cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
