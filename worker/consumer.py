"""The worker's Celery consumer: task events leave in timed batches.

Celery publishes the task events buffered since the last turn of its event loop on
every turn: at full speed that is one PUBLISH, with its JSON and kombu's publishing
work, for every one or two events, about a fifth of a worker's CPU per job. This
consumer publishes them every ``EVENT_FLUSH_S`` instead (and at once when 24 are
waiting, as Celery does), so Flower sees a job's events at most that much later.
Buffered events are published before the consumer stops.
"""

import logging

from celery.worker.consumer import Consumer as CeleryConsumer

log = logging.getLogger(__name__)

EVENT_FLUSH_S = 0.1


class Consumer(CeleryConsumer):
    def register_with_event_loop(self, hub) -> None:  # noqa: ANN001 - Celery's signature
        super().register_with_event_loop(hub)
        # Registered with each loop start: Celery cancels it with the loop's own timers
        # when a connection error restarts the loop, and this registers it again.
        hub.call_repeatedly(EVENT_FLUSH_S, self.flush_buffered_events)

    def on_send_event_buffered(self) -> None:
        """Nothing per event: the timed flush publishes what is buffered."""

    def flush_buffered_events(self) -> None:
        dispatcher = self.event_dispatcher
        if dispatcher is None:
            return
        if any(dispatcher._group_buffer.values()) or dispatcher._outbound_buffer:
            dispatcher.flush()

    def stop(self) -> None:
        self._flush_before_stopping()
        super().stop()

    def shutdown(self) -> None:
        self._flush_before_stopping()
        super().shutdown()

    def _flush_before_stopping(self) -> None:
        try:
            self.flush_buffered_events()
        except Exception as exc:  # noqa: BLE001 - the broker may be gone; stopping goes on
            log.debug("task events not published before stopping: %s", exc)
