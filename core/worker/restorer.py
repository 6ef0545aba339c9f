"""A worker's sweep for abandoned tasks: give a dead worker's unacknowledged messages back."""

import threading
from typing import Any

from kombu.exceptions import OperationalError
from loguru import logger

# How often a worker looks for tasks abandoned by a dead worker: three cheap Redis round trips.
RESTORE_EVERY_S = 2.0


class AbandonedTaskRestorer:
    """Put back on their queue the tasks left unacknowledged past the visibility timeout.

    Kombu's Redis transport keeps every message a worker has taken in the `unacked` hash until
    the worker acknowledges it (after the task ran: acks_late), and puts back those older than
    `visibility_timeout`, so that the tasks of a SIGKILLed worker are not lost. But it sweeps
    only from a prefork worker's event loop, or when a blocking poll finds nothing to read,
    which never happens to a gevent worker: its BRPOP answers every second, empty or not. A
    killed worker's tasks stayed in `unacked` for good. Every worker therefore sweeps here, with
    kombu's own `restore_visible`; its Redis mutex and per-message transaction keep two workers
    from putting one message back twice.
    """

    def __init__(self, app: Any) -> None:
        self._app = app  # the Celery app, whose broker connection the sweep borrows

    def run(self, stopping: threading.Event) -> None:
        """Sweep every RESTORE_EVERY_S until `stopping` is set."""
        connection = self._app.connection_for_read()
        try:
            while not stopping.wait(RESTORE_EVERY_S):
                try:
                    connection.default_channel.qos.restore_visible(num=None, interval=1)
                except restore_errors(connection) as exc:
                    # The consumer reconnects on its own; this loop tries again next round.
                    logger.warning("could not restore abandoned tasks", error=str(exc))
                    connection.collect()
        finally:
            connection.release()


def restore_errors(connection: Any) -> tuple[type[BaseException], ...]:
    """Name the errors of an unreachable broker: kombu's own, and its transport's."""
    return (OperationalError, *connection.connection_errors, *connection.channel_errors)
