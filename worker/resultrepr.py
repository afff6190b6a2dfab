"""The text of a task's return value in its ``task-succeeded`` event (and Celery's success
log line, which ``emailq.worker.lifecycle`` keeps only at DEBUG).

Celery renders every return value with ``celery.utils.saferepr``, a streaming, truncating
repr built for arbitrary objects. For a send's result (a small dict of strings, numbers and
short lists) that walk is a twentieth of the worker's CPU per job. A value made only of
dicts with string keys, lists, strings, numbers, booleans and ``None``, nested no deeper
than saferepr would show, is rendered with the built-in ``repr`` instead when it fits in
the length Celery allows; anything else keeps Celery's rendering.

The built-in ``repr`` escapes what saferepr writes raw: an SMTP reply of several lines in
a refused recipient's entry stays one line in Flower and in the log.
"""

from typing import Any

from celery.app import trace
from celery.utils.saferepr import saferepr as celery_saferepr

_LEAVES = (str, int, float, bool, type(None))
_LEVELS = 3  # containers saferepr shows before it writes "{...}" (its maxlevels default)


def saferepr(o: Any, maxlen: int | None = None, maxlevels: int = _LEVELS, seen: Any = None) -> str:
    """``celery.utils.saferepr.saferepr``, with the built-in ``repr`` for plain data."""
    if maxlevels == _LEVELS and seen is None and _plain(o, _LEVELS):
        text = repr(o)
        if maxlen is None or len(text) <= maxlen:
            return text
    return celery_saferepr(o, maxlen, maxlevels, seen)


def _plain(value: Any, levels: int) -> bool:
    kind = type(value)
    if kind in _LEAVES:
        return True
    if levels == 0:
        return False
    if kind is dict:
        return all(type(k) is str and _plain(v, levels - 1) for k, v in value.items())
    if kind is list:
        return all(_plain(v, levels - 1) for v in value)
    return False


def install() -> None:
    """Render return values this way in every task this process traces (``celery.app.trace``
    looks ``saferepr`` up in its module each time)."""
    trace.saferepr = saferepr
