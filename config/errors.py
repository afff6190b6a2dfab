"""The root of the error tree: settings raise it, and ``config`` imports nothing of ours.

``emailq.core.errors`` holds the rest of the tree and re-exports these two.
"""


class EmailQError(Exception):
    """Base of every error this service raises on purpose."""


class ConfigurationError(EmailQError):
    """A setting is missing or wrong; the message names the variable to fix."""
