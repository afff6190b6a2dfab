"""Flower's settings, read by `celery -A worker flower` from the working directory.

Flower shows every task's recipients and subjects, and can revoke tasks and
shut workers down, so it never starts without authentication.
"""

from config import get_settings

_auth = get_settings().flower_basic_auth
if _auth is None:
    raise SystemExit(
        "Flower refuses to start without authentication: set FLOWER_BASIC_AUTH=user:password "
        "(several as user1:pw1,user2:pw2) in the environment or .env"
    )
basic_auth = [pair.strip() for pair in _auth.get_secret_value().split(",") if pair.strip()]
