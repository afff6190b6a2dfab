"""Where a sent job's result and ack may be written by its ledger record, and where not."""

import os

from celery import Celery

from emailq.core import backends
from emailq.worker.completion import _unacked_keys, completion_for
from emailq.worker.tasks import send


def test_a_task_called_outside_a_worker_has_no_completion():
    assert completion_for(send) is None  # called directly: no message to acknowledge


def test_kombus_own_channel_keeps_its_own_ack():
    plain = Celery(broker="redis://127.0.0.1:1/0", set_as_current=False)
    assert _unacked_keys(plain) is None


def test_a_global_key_prefix_keeps_the_ack_with_kombu():
    app = Celery(broker="redis://127.0.0.1:1/0", set_as_current=False)
    app.conf.broker_transport = "emailq.core.backends:Transport"
    app.conf.broker_transport_options = {"global_keyprefix": "tenant:"}
    assert _unacked_keys(app) is None


def test_the_workers_transport_names_kombus_unacked_keys():
    assert _unacked_keys(send.app) == ("unacked_index", "unacked")
    app = Celery(broker="redis://127.0.0.1:1/0", set_as_current=False)
    app.conf.broker_transport = "emailq.core.backends:Transport"
    app.conf.broker_transport_options = {"unacked_key": "u", "unacked_index_key": "ui"}
    assert _unacked_keys(app) == ("ui", "u")


def test_a_process_that_does_not_ack_keeps_no_tags(monkeypatch):
    # A pool child records a job's ack in the script, but its parent acks the message:
    # the child must not keep the tag it will never be asked about.
    monkeypatch.setattr(backends, "_ACKING_PID", None)
    backends.skip_ack("tag-in-a-child")
    assert "tag-in-a-child" not in backends._ACKED

    monkeypatch.setattr(backends, "_ACKING_PID", os.getpid())
    backends.skip_ack("tag-here")
    assert "tag-here" in backends._ACKED
    backends._ACKED.discard("tag-here")
