"""Flower's authentication rule (``emailq.worker.flower``), applied to Flower's parsed options."""

import os
from types import SimpleNamespace

import pytest
from flower.views.monitor import Metrics

from emailq.config import load_settings
from emailq.core.errors import ConfigurationError
from emailq.worker import flower

UNPROTECTED = getattr(Metrics.get, "__wrapped__", Metrics.get)


@pytest.fixture(autouse=True)
def _unprotected_metrics(monkeypatch):
    """Each test starts from Flower's own handler; the rule's change is undone after it."""
    monkeypatch.setattr(Metrics, "get", UNPROTECTED)


def options(basic=None, auth=None):
    return SimpleNamespace(basic_auth=basic, auth=auth)


def settings(**overrides):
    return load_settings(_env_file=os.devnull, **overrides)


@pytest.mark.parametrize(
    "entries",
    [[" "], ["", ""], [":"], ["admin"], ["admin:"], [":s3cret-pw"], ["admin:s3cret-pw", "bob"]],
)
def test_empty_or_malformed_credentials_are_refused_naming_the_variable(entries):
    with pytest.raises(ConfigurationError, match="FLOWER_BASIC_AUTH") as refused:
        flower.enforce(options(basic=entries), settings())

    assert "s3cret-pw" not in str(refused.value)


def test_no_credentials_at_all_are_refused():
    with pytest.raises(ConfigurationError, match="FLOWER_BASIC_AUTH"):
        flower.enforce(options(), settings())


def test_credentials_from_the_env_file_setting_are_applied_to_flower():
    opts = options()

    flower.enforce(opts, settings(flower_basic_auth="admin:pw-1,ops:pw-2"))

    assert opts.basic_auth == ["admin:pw-1", "ops:pw-2"]


def test_oauth_or_the_explicit_development_flag_also_let_flower_start():
    flower.enforce(options(auth=r".*@example\.com"), settings())
    flower.enforce(options(), settings(flower_insecure_no_auth=True))


def test_metrics_need_the_dashboards_credentials_unless_opened_explicitly():
    flower.enforce(options(basic=["admin:pw"]), settings(flower_metrics_public=True))
    assert Metrics.get is UNPROTECTED

    flower.enforce(options(basic=["admin:pw"]), settings())
    assert Metrics.get is not UNPROTECTED and Metrics.get._emailq_protected
