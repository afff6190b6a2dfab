"""Flower's settings, read by `celery -A worker flower` from the working directory.

Flower shows every task's recipients and subjects, and can revoke tasks and shut
workers down, so it never starts without authentication unless a developer says so
with FLOWER_INSECURE_NO_AUTH=true. Prometheus metrics are served at /metrics.
"""

from config import get_settings

_settings = get_settings()
if _settings.flower_basic_auth is not None:
    basic_auth = [
        pair.strip()
        for pair in _settings.flower_basic_auth.get_secret_value().split(",")
        if pair.strip()
    ]
elif not (_settings.flower_auth or _settings.flower_insecure_no_auth):
    raise SystemExit(
        "Flower refuses to start without authentication: set FLOWER_BASIC_AUTH=user:password "
        "(several as user1:pw1,user2:pw2) in the environment or .env, or Flower's OAuth "
        "(FLOWER_AUTH and its FLOWER_OAUTH2_* options); FLOWER_INSECURE_NO_AUTH=true runs it "
        "open, for local development only"
    )
