"""A worker's heartbeat: the fleet's record that it is alive, and which models it holds."""

import threading
import time

import redis
from loguru import logger

from core.model.shelf import ModelShelf
from core.online import fleet
from core.worker import metrics as worker_metrics


class Heartbeat:
    """Write one worker's heartbeat every `interval_s`, surviving Redis outages."""

    def __init__(
        self,
        client: redis.Redis,
        shelf: ModelShelf,
        *,
        name: str,
        concurrency: int,
        interval_s: float,
    ) -> None:
        self._client = client
        self._shelf = shelf
        self._name = name
        self._concurrency = concurrency
        self._interval_s = interval_s

    def run(self, stopping: threading.Event) -> None:
        """Beat until `stopping` is set (the loop of one of the worker's threads)."""
        while not stopping.is_set():
            self.beat()
            stopping.wait(self._interval_s)

    def beat(self) -> None:
        """Write the heartbeat once, and the model-info metric with it."""
        evaluators, devices = self._shelf.evaluators, self._shelf.devices
        info = fleet.encode_worker_info(
            self._shelf.loaded_version, evaluators, self._concurrency, devices
        )
        worker_metrics.WORKER_MODEL_INFO.clear()
        for version, evaluator in evaluators.items():
            device = devices.get(version, "cpu")
            worker_metrics.WORKER_MODEL_INFO.labels(version, evaluator, device).set(1)
        try:
            with self._client.pipeline(transaction=False) as pipe:
                pipe.zadd(fleet.WORKERS_KEY, {self._name: time.time()})
                pipe.hset(fleet.WORKERS_INFO_KEY, self._name, info)
                pipe.execute()
        except redis.RedisError as exc:
            logger.warning("heartbeat failed", worker=self._name, error=str(exc))


def say_goodbye(client: redis.Redis, name: str) -> None:
    """Remove a stopping worker's heartbeat, so the fleet stops counting it at once."""
    try:
        client.zrem(fleet.WORKERS_KEY, name)
        client.hdel(fleet.WORKERS_INFO_KEY, name)
    except redis.RedisError as exc:
        logger.warning("could not remove heartbeat", error=str(exc))
