"""Celery's task request, with the broker's delivery tag in ``request.delivery_info``.

The tag names the job in kombu's unacked set; ``emailq.worker.completion`` takes it out
there in the same script that records a sent job.
"""

from typing import Any

from celery.worker.request import Request as CeleryRequest


class Request(CeleryRequest):
    def __init__(self, message: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(message, *args, **kwargs)
        tag = getattr(message, "delivery_tag", None)
        if isinstance(tag, str):
            self._delivery_info["delivery_tag"] = tag
