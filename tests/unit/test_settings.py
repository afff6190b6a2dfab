"""``config.load_settings``: defaults, the environment, ``.env``, presets and refusals."""

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from emailq.config import Settings, load_settings
from emailq.core.errors import ConfigurationError

PASSWORD = "hunter2-Zq9!secret"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """No setting from the outer environment (or a stray ``.env``) can leak into a test."""
    names = {name.upper() for name in Settings.model_fields}
    names |= {"EMAILQ_DATA_DIR", "EMAILQ_DATABASE_URL", "EMAILQ_SECRET_KEY"}
    for key in list(os.environ):
        if key.upper() in names:
            monkeypatch.delenv(key)
    monkeypatch.setenv("EMAILQ_ENV_FILE", os.devnull)
    monkeypatch.chdir(tmp_path)


def load(**overrides):
    return load_settings(_env_file=os.devnull, **overrides)


def refusal(**overrides) -> str:
    with pytest.raises(ConfigurationError) as excinfo:
        load(**overrides)
    return str(excinfo.value)


# Defaults and the security mode chosen from the port


def test_defaults_point_at_local_redis_and_the_development_sink():
    settings = load()
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.smtp_server == "localhost"
    assert settings.smtp_port == 1025
    assert settings.security == "none"
    assert settings.email_password is None
    assert settings.login is None


@pytest.mark.parametrize(
    ("port", "security"),
    [
        ("465", "ssl"),
        ("587", "starttls"),
        ("1025", "none"),
        ("2525", "starttls"),
        ("25", "starttls"),
    ],
)
def test_security_is_derived_from_the_port_when_not_set(monkeypatch, port, security):
    monkeypatch.setenv("SMTP_PORT", port)
    assert load().security == security


def test_explicit_smtp_security_wins_over_the_port(monkeypatch):
    monkeypatch.setenv("SMTP_PORT", "465")
    monkeypatch.setenv("SMTP_SECURITY", "starttls")
    assert load().security == "starttls"


# Where values come from


def test_article_variable_names_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("SMTP_SERVER", "smtp.example.com")
    monkeypatch.setenv("SMTP_PORT", "587")
    monkeypatch.setenv("EMAIL_ADDRESS", "alerts@example.com")
    monkeypatch.setenv("EMAIL_PASSWORD", PASSWORD)
    settings = load()
    assert settings.smtp_server == "smtp.example.com"
    assert settings.smtp_port == 587
    assert settings.security == "starttls"
    assert settings.email_address == "alerts@example.com"
    assert settings.email_password.get_secret_value() == PASSWORD
    assert settings.login == "alerts@example.com"


def test_dotenv_file_is_read(tmp_path):
    env_file = tmp_path / "custom.env"
    env_file.write_text(
        "SMTP_SERVER=smtp.example.org\n"
        "SMTP_PORT=465\n"
        "EMAIL_ADDRESS=bot@example.org\n"
        f"EMAIL_PASSWORD={PASSWORD}\n",
        encoding="utf-8",
    )
    settings = load_settings(_env_file=env_file)
    assert (settings.smtp_server, settings.smtp_port, settings.security) == (
        "smtp.example.org",
        465,
        "ssl",
    )
    assert settings.email_address == "bot@example.org"
    assert settings.email_password.get_secret_value() == PASSWORD


def test_emailq_env_file_names_the_dotenv_file_when_no_override_is_given(monkeypatch, tmp_path):
    env_file = tmp_path / "from-variable.env"
    env_file.write_text("SMTP_SERVER=relay.example.net\n", encoding="utf-8")
    monkeypatch.setenv("EMAILQ_ENV_FILE", str(env_file))
    assert load_settings().smtp_server == "relay.example.net"


def test_environment_variables_win_over_the_dotenv_file(monkeypatch, tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("SMTP_SERVER=from-file.example.com\n", encoding="utf-8")
    monkeypatch.setenv("SMTP_SERVER", "from-env.example.com")
    assert load_settings(_env_file=env_file).smtp_server == "from-env.example.com"


def test_a_dotenv_in_the_working_directory_is_never_read(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text("SMTP_SERVER=from-cwd.example.com\n", encoding="utf-8")
    monkeypatch.delenv("EMAILQ_ENV_FILE")

    assert load_settings().smtp_server == "localhost"


def test_a_relative_emailq_env_file_is_an_error(monkeypatch, tmp_path):
    (tmp_path / "app.env").write_text("SMTP_SERVER=relay.example.net\n", encoding="utf-8")
    monkeypatch.setenv("EMAILQ_ENV_FILE", "app.env")

    with pytest.raises(ConfigurationError, match="EMAILQ_ENV_FILE.*relative"):
        load_settings()


def test_an_emailq_env_file_that_does_not_exist_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("EMAILQ_ENV_FILE", str(tmp_path / "missing.env"))

    with pytest.raises(ConfigurationError, match="EMAILQ_ENV_FILE.*missing.env"):
        load_settings()


# Nothing depends on the working directory


def test_files_we_write_default_to_the_user_data_directory_not_the_working_directory(tmp_path):
    import platformdirs

    settings = load()

    assert settings.data_dir == Path(platformdirs.user_data_dir("emailq"))
    assert settings.data_dir.is_absolute() and tmp_path not in settings.data_dir.parents
    assert settings.tracking_url == f"sqlite:///{settings.data_dir / 'emailq.sqlite3'}"


def test_the_tracking_database_and_its_relative_sqlite_path_live_in_emailq_data_dir(
    monkeypatch, tmp_path
):
    monkeypatch.setenv("EMAILQ_DATA_DIR", str(tmp_path / "data"))
    assert load().tracking_url == f"sqlite:///{tmp_path / 'data' / 'emailq.sqlite3'}"

    monkeypatch.setenv("DATABASE_URL", "sqlite:///tracking/jobs.db")
    assert load().tracking_url == f"sqlite:///{tmp_path / 'data' / 'tracking' / 'jobs.db'}"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("EMAILQ_DATA_DIR", "data"), ("TEMPLATES_DIR", "templates"), ("SMTP_CA_FILE", "ca.pem")],
)
def test_a_relative_path_is_refused_naming_its_variable(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)

    message = refusal()

    assert variable in message and "relative" in message


def test_emailq_database_url_wins_over_the_applications_database_url(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db/app")
    assert load().tracking_url == "postgresql://app@db/app"

    monkeypatch.setenv("EMAILQ_DATABASE_URL", "postgresql://emailq@db/emailq")
    assert load().tracking_url == "postgresql://emailq@db/emailq"


def test_emailq_secret_key_wins_over_the_applications_secret_key(monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "the-django-secret")
    monkeypatch.setenv("EMAILQ_SECRET_KEY", "our-own-secret")

    assert load().secret_key.get_secret_value() == "our-own-secret"


def test_empty_variable_in_dotenv_means_not_set(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("SMTP_SERVER=\nSMTP_PORT=\n", encoding="utf-8")
    settings = load_settings(_env_file=env_file)
    assert (settings.smtp_server, settings.smtp_port) == ("localhost", 1025)


def test_keyword_overrides_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("SMTP_SERVER", "from-env.example.com")
    assert load(smtp_server="override.example.com").smtp_server == "override.example.com"


# Provider presets


@pytest.mark.parametrize(
    ("provider", "host", "port"),
    [
        ("gmail", "smtp.gmail.com", 587),
        ("outlook", "smtp-mail.outlook.com", 587),
        ("yahoo", "smtp.mail.yahoo.com", 587),
        ("sendgrid", "smtp.sendgrid.net", 587),
        ("mailtrap", "smtp.mailtrap.io", 2525),
        ("ses:eu-west-1", "email-smtp.eu-west-1.amazonaws.com", 587),
        ("GMail", "smtp.gmail.com", 587),
    ],
)
def test_provider_preset_fills_host_port_and_security(monkeypatch, provider, host, port):
    monkeypatch.setenv("SMTP_PROVIDER", provider)
    settings = load()
    assert (settings.smtp_server, settings.smtp_port, settings.security) == (
        host,
        port,
        "starttls",
    )


def test_explicit_smtp_server_wins_over_the_provider_preset(monkeypatch):
    monkeypatch.setenv("SMTP_PROVIDER", "gmail")
    monkeypatch.setenv("SMTP_SERVER", "relay.example.com")
    settings = load()
    assert settings.smtp_server == "relay.example.com"
    assert settings.smtp_port == 587


def test_explicit_port_465_with_gmail_uses_implicit_tls(monkeypatch):
    monkeypatch.setenv("SMTP_PROVIDER", "gmail")
    monkeypatch.setenv("SMTP_PORT", "465")
    settings = load()
    assert (settings.smtp_server, settings.smtp_port, settings.security) == (
        "smtp.gmail.com",
        465,
        "ssl",
    )


@pytest.mark.parametrize("provider", ["hotmail", "ses:", "ses:eu west 1", "ses:eu_west_1", "ses:-"])
def test_unknown_or_malformed_provider_is_refused_naming_smtp_provider(monkeypatch, provider):
    monkeypatch.setenv("SMTP_PROVIDER", provider)
    with pytest.raises(ConfigurationError, match="SMTP_PROVIDER"):
        load()


# Refused values name the variable to fix


@pytest.mark.parametrize("port", ["abc", "0", "70000", "-1"])
def test_bad_smtp_port_is_refused_naming_smtp_port(monkeypatch, port):
    monkeypatch.setenv("SMTP_PORT", port)
    assert "SMTP_PORT" in refusal()


def test_bad_smtp_security_is_refused_naming_smtp_security(monkeypatch):
    monkeypatch.setenv("SMTP_SECURITY", "tls")
    assert "SMTP_SECURITY" in refusal()


def test_relative_ca_file_is_refused_naming_smtp_ca_file(monkeypatch):
    monkeypatch.setenv("SMTP_CA_FILE", "certs/ca.pem")
    assert "SMTP_CA_FILE" in refusal()


def test_missing_ca_file_is_refused_by_the_worker_naming_smtp_ca_file(monkeypatch, tmp_path):
    from emailq.worker.sender import tls_context

    monkeypatch.setenv("SMTP_CA_FILE", str(tmp_path / "missing-ca.pem"))
    with pytest.raises(ConfigurationError, match="SMTP_CA_FILE"):
        tls_context(load())


def test_existing_ca_file_is_accepted(monkeypatch, tmp_path):
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("-----BEGIN CERTIFICATE-----\n", encoding="ascii")
    monkeypatch.setenv("SMTP_CA_FILE", str(ca_file))
    assert load().smtp_ca_file == ca_file


@pytest.mark.parametrize(
    "variable",
    ["SMTP_TIMEOUT_S", "RETRY_BACKOFF_BASE_S", "RETRY_BACKOFF_MAX_S", "VISIBILITY_TIMEOUT_S"],
)
@pytest.mark.parametrize("value", ["0", "-5"])
def test_zero_or_negative_timeout_is_refused_naming_the_variable(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    assert variable in refusal()


def test_tracking_retention_defaults_to_90_days_and_0_means_keep_for_ever(monkeypatch):
    assert load().tracking_retention_days == 90
    monkeypatch.setenv("TRACKING_RETENTION_DAYS", "0")
    assert load().tracking_retention_days == 0


@pytest.mark.parametrize("value", ["-1", "1.5", "ninety"])
def test_a_negative_or_non_integer_retention_is_refused_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("TRACKING_RETENTION_DAYS", value)
    message = refusal()
    assert "TRACKING_RETENTION_DAYS" in message and repr(value) in message


# Secrets


def remote_credentials(monkeypatch):
    monkeypatch.setenv("SMTP_SERVER", "smtp.example.com")
    monkeypatch.setenv("SMTP_PORT", "587")
    monkeypatch.setenv("EMAIL_ADDRESS", "alerts@example.com")
    monkeypatch.setenv("EMAIL_PASSWORD", PASSWORD)


def test_password_never_appears_in_repr_or_str(monkeypatch):
    remote_credentials(monkeypatch)
    settings = load()
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings)


def test_redis_url_password_is_masked_in_repr(monkeypatch):
    monkeypatch.setenv("REDIS_URL", f"redis://:{PASSWORD}@redis.example.com:6379/0")
    settings = load()
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings)


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("SMTP_PORT", "abc", "SMTP_PORT"),
        ("SMTP_PROVIDER", "nope", "SMTP_PROVIDER"),
        ("SMTP_SECURITY", "none", "EMAIL_PASSWORD"),
        ("EMAIL_ADDRESS", "not-an-address", "EMAIL_ADDRESS"),
        ("REDIS_URL", "http://example.com", "REDIS_URL"),
        ("SMTP_TIMEOUT_S", "-1", "SMTP_TIMEOUT_S"),
    ],
)
def test_password_never_appears_in_a_configuration_error(monkeypatch, variable, value, named):
    remote_credentials(monkeypatch)
    monkeypatch.setenv(variable, value)
    message = refusal()
    assert named in message
    assert PASSWORD not in message


def test_password_without_login_is_refused_without_showing_it(monkeypatch):
    monkeypatch.setenv("EMAIL_PASSWORD", PASSWORD)
    message = refusal()
    assert "SMTP_USERNAME" in message
    assert "EMAIL_ADDRESS" in message
    assert PASSWORD not in message


@pytest.mark.parametrize(
    "transport",
    [{"SMTP_SECURITY": "none", "SMTP_PORT": "587"}, {"SMTP_PORT": "1025"}],
    ids=["explicit-none", "none-from-port"],
)
def test_password_in_clear_text_to_a_remote_server_is_refused(monkeypatch, transport):
    remote_credentials(monkeypatch)
    for name, value in transport.items():
        monkeypatch.setenv(name, value)
    message = refusal()
    assert "EMAIL_PASSWORD" in message
    assert PASSWORD not in message


@pytest.mark.parametrize("server", ["localhost", "127.0.0.1", "::1"])
def test_password_without_encryption_is_allowed_on_loopback(monkeypatch, server):
    monkeypatch.setenv("SMTP_SERVER", server)
    monkeypatch.setenv("SMTP_SECURITY", "none")
    monkeypatch.setenv("EMAIL_ADDRESS", "dev@example.com")
    monkeypatch.setenv("EMAIL_PASSWORD", PASSWORD)
    assert load().security == "none"


# Derived values


def test_sender_prefers_email_from(monkeypatch):
    monkeypatch.setenv("EMAIL_FROM", "Alerts <alerts@example.com>")
    monkeypatch.setenv("EMAIL_ADDRESS", "login@example.com")
    sender = load().sender
    assert sender.display_name == "Alerts"
    assert sender.addr_spec == "alerts@example.com"


def test_sender_falls_back_to_email_address(monkeypatch):
    monkeypatch.setenv("EMAIL_ADDRESS", "login@example.com")
    sender = load().sender
    assert sender.display_name == ""
    assert sender.addr_spec == "login@example.com"


def test_sender_without_email_from_or_address_raises_configuration_error():
    settings = load()
    with pytest.raises(ConfigurationError, match="EMAIL_FROM"):
        _ = settings.sender


def test_login_prefers_smtp_username(monkeypatch):
    monkeypatch.setenv("EMAIL_ADDRESS", "alerts@example.com")
    monkeypatch.setenv("SMTP_USERNAME", "apikey")
    assert load().login == "apikey"


def test_login_falls_back_to_email_address(monkeypatch):
    monkeypatch.setenv("EMAIL_ADDRESS", "alerts@example.com")
    assert load().login == "alerts@example.com"


def test_settings_are_frozen():
    settings = load()
    with pytest.raises(ValidationError, match="frozen"):
        settings.smtp_port = 25
    assert settings.smtp_port == 1025
