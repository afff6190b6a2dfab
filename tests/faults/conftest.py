"""The integration fixtures (aiosmtpd, TLS material, workers), for the fault-finding tests.

``pytest_plugins`` is allowed only in the root conftest; fixtures imported into a
conftest are registered like its own. A star import skips ``_empty_broker``, the autouse
fixture that flushes the session redis before each test, so it is imported by name.
"""

from tests.integration.conftest import *  # noqa: F403
from tests.integration.conftest import _empty_broker as _empty_broker
