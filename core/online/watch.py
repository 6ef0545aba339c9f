"""A loop that an API-process part runs in the background until it is closed."""

import asyncio
import contextlib


class Watch:
    """Run `_watch` as a background task from `start()` until `close()`.

    Subclasses loop on `while not self._closing`: redis-py may turn a cancellation in the middle
    of a command into a connection error, which their loops survive by design.
    """

    _TASK_NAME = "tripq-watch"

    def __init__(self) -> None:
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the background loop."""
        self._task = asyncio.create_task(self._watch(), name=self._TASK_NAME)

    async def close(self) -> None:
        """Stop the background loop and wait for it to end."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        raise NotImplementedError
