"""A task's return value as its task-succeeded event shows it (emailq.worker.resultrepr)."""

import inspect

from celery.app import trace
from celery.utils.saferepr import saferepr as celery_saferepr

import emailq.worker  # noqa: F401 - installs the rendering, as a worker does
from emailq.worker.resultrepr import saferepr

RESULT = {
    "message_id": "<id@example.com>",
    "accepted": ["a@example.com", "o'neil@example.com"],
    "refused": {"gone@example.com": [550, "5.1.1 No such user\n5.1.1 Really"]},
    "bcc": {"accepted": 1, "refused": 0},
    "status": "partial",
    "sent_at": 1764460800.25,
    "duplicate": False,
    "note": None,
}


def test_the_worker_renders_results_this_way():
    assert trace.saferepr is saferepr


def test_celerys_tracer_still_looks_the_renderer_up_by_name_for_each_result():
    # If Celery binds saferepr some other way, installing ours does nothing: this fails.
    assert "Rstr = saferepr(R, resultrepr_maxsize)" in inspect.getsource(trace.build_tracer)


def test_plain_data_is_its_repr_with_line_breaks_escaped():
    assert saferepr(RESULT, 1024) == repr(RESULT)
    assert "\n" not in saferepr(RESULT, 1024)
    assert "\n" in celery_saferepr(RESULT, 1024)  # what Celery's own rendering writes


def test_plain_data_that_celery_would_shorten_or_cut_keeps_celerys_rendering():
    long = {"accepted": [f"user{i}@example.com" for i in range(200)]}
    assert saferepr(long, 1024) == celery_saferepr(long, 1024)
    deep = {"a": {"b": [{"c": 1}]}}  # a fourth container: saferepr writes {...}
    assert saferepr(deep, 1024) == celery_saferepr(deep, 1024)
    assert saferepr({"a": {"b": [1]}}, 1024) == repr({"a": {"b": [1]}})


def test_anything_else_keeps_celerys_rendering():
    class Odd:
        def __repr__(self) -> str:
            return "<odd>"

    for value in ({"a": Odd()}, {1: "int key"}, ("a", "tuple"), {"a": b"bytes"}, {"s": {1}}):
        assert saferepr(value, 1024) == celery_saferepr(value, 1024)
    assert saferepr(RESULT, 1024, maxlevels=1) == celery_saferepr(RESULT, 1024, maxlevels=1)
