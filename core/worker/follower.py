"""A worker's routing follower: hold the models the routing names, consume their queues."""

import threading
from collections.abc import Sequence
from typing import Any

import redis
from loguru import logger

from core.model.shelf import ModelShelf
from core.online.routing import QUEUED_VERSIONS_KEY, ROUTING_KEY, Routing, version_queue

# How often a worker reads the routing (core.online.routing): a promotion reaches it within this.
FOLLOW_EVERY_S = 1.0


class RoutingFollower:
    """Follow the routing in Redis for one worker: its shelf and its consumer's queues.

    A version's queues (one per queue the worker consumes: the online one and the jobs one) are
    consumed only once its model is loaded, and no longer once it is dropped: a task pinned to a
    version never reaches a worker without it. `consumed` names the versions whose queues are
    consumed, and is kept up to date. Each version is recorded in Redis as it is first consumed,
    so that its queues are swept once no worker holds it (core.worker.sweeper).
    """

    def __init__(
        self, consumer: Any, client: redis.Redis, shelf: ModelShelf, *, queues: Sequence[str]
    ) -> None:
        self._consumer = consumer  # Celery's consumer: add_task_queue, cancel_task_queue
        self._client = client
        self._shelf = shelf
        self._queues = list(queues)
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
            try:
                self._client.sadd(QUEUED_VERSIONS_KEY, version)
            except redis.RedisError:
                continue  # its queues are consumed from the round that records it
            for queue in self._queues:
                self._consumer.add_task_queue(version_queue(queue, version))
            self.consumed.add(version)
        for version in sorted(self.consumed - held):
            for queue in self._queues:
                self._consumer.cancel_task_queue(version_queue(queue, version))
            self.consumed.discard(version)

    def run(self, stopping: threading.Event) -> None:
        """Follow every FOLLOW_EVERY_S until `stopping` is set."""
        while not stopping.wait(FOLLOW_EVERY_S):
            try:
                self.follow()
            except Exception:  # a broker hiccup must not end the following for good
                logger.exception("could not follow the model routing; retrying")
