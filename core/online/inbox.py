"""The result inbox: one pattern subscription that receives the results of this process's tasks.

    sender: task id <inbox>-<uuid> ──> expect(task id) ──> future
    worker: SET + PUBLISH celery-task-meta-<inbox>-<uuid> ──> listener (PSUBSCRIBE <inbox>-*)
                                                               │ resolves the future
                                                               └> key deleted in the background

Every API process owns an *inbox*: a random prefix on the ids of the tasks it sends. One pattern
subscription on one connection receives the results of all its tasks and only those, so there is
no subscribe/unsubscribe per request, no race between a send and its subscription, and no thread
parked per waiting request.

Results that were published while the listener was disconnected are read back from their keys
when it reconnects; a result read is deleted, so keys do not pile up in Redis.
"""

import asyncio
import contextlib
import time
import uuid

from loguru import logger
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from core.errors import BackendUnavailable
from core.online import protocol

_RECONNECT_BACKOFF_S = (0.05, 0.1, 0.25, 0.5, 1.0)
_DELETE_EVERY_S = 0.1
_CONFIRM_S = 5.0
_PING_EVERY_S = 1.0  # an idle subscription is pinged this often
_SILENT_S = 3.0  # and given up once it has heard nothing, not even a pong, this long


class ResultInbox:
    """Receive the results of the tasks this process sends, through one subscription."""

    def __init__(self, backend: Redis) -> None:
        self._backend = backend
        self._prefix = uuid.uuid4().hex[:12]
        self._pending: dict[str, asyncio.Future[protocol.TaskOutcome]] = {}
        self._read_keys: list[str] = []
        self._subscribed = asyncio.Event()
        # redis-py may turn a cancellation in the middle of a command into a connection error,
        # which the loops below survive by design: they also stop on this flag.
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def listening(self) -> bool:
        """Tell whether results are listened for now."""
        return self._subscribed.is_set()

    def new_task_id(self) -> str:
        """Name a new task so that its result comes to this inbox."""
        return f"{self._prefix}-{uuid.uuid4().hex}"

    def expect(self, task_id: str) -> "asyncio.Future[protocol.TaskOutcome]":
        """Return the future that the result of `task_id` resolves; `forget` it once read."""
        future: asyncio.Future[protocol.TaskOutcome] = asyncio.get_running_loop().create_future()
        self._pending[task_id] = future
        return future

    def forget(self, task_id: str) -> None:
        """Stop waiting for the result of `task_id`."""
        self._pending.pop(task_id, None)

    async def start(self, wait_s: float = 0.0) -> None:
        """Start listening; wait up to `wait_s` for the subscription."""
        self._tasks = [
            asyncio.create_task(self._listen(), name="tripq-result-listener"),
            asyncio.create_task(self._delete_read_results(), name="tripq-result-reaper"),
        ]
        if wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._subscribed.wait(), wait_s)

    def fail_waiting(self, reason: str) -> None:
        """Fail every wait for a result: the process is shutting down."""
        self._closing = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BackendUnavailable(reason))

    async def close(self) -> None:
        """Stop listening and delete the results read so far."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._flush_deletes()

    async def _listen(self) -> None:
        """Receive every result for this inbox, reconnecting whenever the connection drops."""
        pattern = protocol.result_key(f"{self._prefix}-*")
        attempt = 0
        while not self._closing:
            pubsub = self._backend.pubsub()
            try:
                await pubsub.psubscribe(pattern)
                await self._confirmed(pubsub)
                self._subscribed.set()
                if attempt:
                    logger.info("result listener reconnected", inbox=self._prefix)
                    await self._recover_missed()
                attempt = 0
                await self._receive(pubsub)
            except (RedisError, OSError, TimeoutError) as exc:
                self._subscribed.clear()
                delay = _RECONNECT_BACKOFF_S[min(attempt, len(_RECONNECT_BACKOFF_S) - 1)]
                if attempt == 0:
                    logger.warning("result listener lost Redis", error=str(exc))
                attempt += 1
                await asyncio.sleep(delay)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]

    @staticmethod
    async def _confirmed(pubsub: PubSub) -> None:
        """Wait for Redis to confirm the pattern subscription."""
        async with asyncio.timeout(_CONFIRM_S):
            while True:
                message = await pubsub.get_message(timeout=_CONFIRM_S)
                if message is not None and message["type"] == "psubscribe":
                    return

    async def _receive(self, pubsub: PubSub) -> None:
        """Resolve the results that come; raise TimeoutError once Redis falls silent.

        A Redis that died with its host, or that a partition hides, says nothing: no reset, no
        error, only silence, and a subscription would wait on it for ever while results go to
        the master that replaced it. So an idle subscription is pinged, and one that has heard
        nothing for _SILENT_S, not even its pong, is given up and made anew.
        """
        prefix_len = len(protocol.RESULT_KEY_PREFIX)
        heard = pinged = time.monotonic()
        while True:
            message = await pubsub.get_message(timeout=_PING_EVERY_S)
            now = time.monotonic()
            if message is not None:
                heard = now
                if message["type"] == "pmessage":
                    task_id = message["channel"][prefix_len:].decode()
                    self._resolve(task_id, protocol.decode_result(message["data"]))
                continue
            if now - heard > _SILENT_S:
                raise TimeoutError(f"the result subscription heard nothing for {_SILENT_S:g} s")
            if now - pinged >= _PING_EVERY_S:
                await pubsub.ping()
                pinged = now

    def _resolve(self, task_id: str, outcome: protocol.TaskOutcome) -> None:
        if not outcome.ready:
            return
        self._read_keys.append(protocol.result_key(task_id))
        future = self._pending.get(task_id)
        if future is not None and not future.done():
            future.set_result(outcome)

    async def _recover_missed(self) -> None:
        """Read back results published while the listener was away."""
        task_ids = list(self._pending)
        if not task_ids:
            return
        raws = await self._backend.mget([protocol.result_key(t) for t in task_ids])
        for task_id, raw in zip(task_ids, raws, strict=True):
            if raw is not None:
                self._resolve(task_id, protocol.decode_result(raw))

    async def _delete_read_results(self) -> None:
        while not self._closing:
            await asyncio.sleep(_DELETE_EVERY_S)
            await self._flush_deletes()

    async def _flush_deletes(self) -> None:
        if not self._read_keys:
            return
        keys, self._read_keys = self._read_keys, []
        try:
            await self._backend.unlink(*keys)
        except (RedisError, OSError):
            # Unread keys still expire after result_ttl_s; nothing is lost by skipping a round.
            logger.debug("could not delete read results", count=len(keys))
