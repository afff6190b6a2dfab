"""The two sizes of every fault test: short (``make test``) and long (``make faults``).

``FAULTS_LONG=1`` in the environment selects the long form: bigger batches, longer
outages, and the slower variants (Redis's ``appendfsync everysec``). Without it each
fault test runs its short form, sized to stay well under 20 s on a loaded 2-core machine.
"""

import os
from typing import TypeVar

import pytest

T = TypeVar("T")

LONG = os.environ.get("FAULTS_LONG", "") not in ("", "0")
FORM = "long" if LONG else "short"


def pick(short: T, long: T) -> T:
    """``short`` by default, ``long`` under ``FAULTS_LONG=1``."""
    return long if LONG else short


long_only = pytest.mark.skipif(not LONG, reason="long form only: FAULTS_LONG=1 (make faults)")
# The long form's batches and outages take minutes; pyproject's 300 s is per test.
timeout = pytest.mark.timeout(pick(300, 900))
