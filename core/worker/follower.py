"""A worker's routing follower: hold the models the routing names, consume their queues."""

import threading
from typing import Any

import redis
from loguru import logger

from core.model.shelf import ModelShelf
from core.online.routing import ROUTING_KEY, Routing, version_queue

# How often a worker reads the routing (core.online.routing): a promotion reaches it within this.
FOLLOW_EVERY_S = 1.0


class RoutingFollower:
    """Follow the routing in Redis for one worker: its shelf and its consumer's queues.

    A version's queue is consumed only once its model is loaded, and no longer once it is
    dropped: a task pinned to a version never reaches a worker without it. `consumed` names the
    versions whose queues are consumed, and is kept up to date.
    """

    def __init__(
        self, consumer: Any, client: redis.Redis, shelf: ModelShelf, *, queue: str
    ) -> None:
        self._consumer = consumer  # Celery's consumer: add_task_queue, cancel_task_queue
        self._client = client
        self._shelf = shelf
        self._queue = queue
        self.consumed: set[str] = set()

    def follow(self) -> None:
        """Read the routing once, and bring the shelf and the consumed queues in line with it."""
        try:
            routing = Routing.from_hash(self._client.hgetall(ROUTING_KEY))
        except redis.RedisError:
            return  # the last routing stays in force; the consumer reconnects on its own
        self._shelf.follow(routing)
        held = set(self._shelf.versions)
        for version in sorted(held - self.consumed):
            self._consumer.add_task_queue(version_queue(self._queue, version))
            self.consumed.add(version)
        for version in sorted(self.consumed - held):
            self._consumer.cancel_task_queue(version_queue(self._queue, version))
            self.consumed.discard(version)

    def run(self, stopping: threading.Event) -> None:
        """Follow every FOLLOW_EVERY_S until `stopping` is set."""
        while not stopping.wait(FOLLOW_EVERY_S):
            try:
                self.follow()
            except Exception:  # a broker hiccup must not end the following for good
                logger.exception("could not follow the model routing; retrying")
