"""The Celery app, built the same way on both sides: JSON only, the high and normal queues.

The producer and the worker each build their own instance. Neither becomes the host
application's current app, and no task of ours is shared with the host's apps.
"""

from celery import Celery


def make_app() -> Celery:
    app = Celery(
        "emailq",
        # Importing emailq must not send the host's own shared_tasks to our broker.
        set_as_current=False,
        # No Django fix-up: our worker runs none of the host's code.
        fixups=[],
    )
    app.config_from_object("emailq.core.celeryconfig")
    app.on_after_finalize.connect(_only_our_tasks, weak=False)
    return app


def _only_our_tasks(sender: Celery, **_: object) -> None:
    """Drop the host's shared_tasks, which Celery hands to every app as it finalizes."""
    for name in [n for n in sender.tasks if not n.startswith(("emailq.", "celery."))]:
        del sender.tasks[name]
