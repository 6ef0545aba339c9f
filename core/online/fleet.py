"""The worker fleet as Redis sees it: each worker writes a heartbeat, readers list the live ones.

    tripq:workers            sorted set: worker name -> time of its last heartbeat (epoch seconds)
    tripq:workers:info       hash: worker name -> JSON {model_version, model_versions, evaluators,
                                                          concurrency}

A worker is live while its last heartbeat is younger than the configured TTL; stale entries are
pruned by readers, so a SIGKILLed worker disappears without anyone cleaning up after it.
"""

import json
import time
from collections.abc import Mapping

from core.online.schemas import WorkerInfo

WORKERS_KEY = "tripq:workers"
WORKERS_INFO_KEY = "tripq:workers:info"


def encode_worker_info(
    model_version: str | None, evaluators: dict[str, str], concurrency: int
) -> str:
    """Encode what a worker's heartbeat says about it: its versions and what runs each."""
    return json.dumps(
        {
            "model_version": model_version,
            "model_versions": sorted(evaluators),
            "evaluators": evaluators,
            "concurrency": concurrency,
        }
    )


def live_workers(
    seen: list[tuple[bytes | str, float]],
    info: Mapping[bytes | str, bytes | str | None],
    now: float | None = None,
) -> list[WorkerInfo]:
    """Describe the workers whose heartbeats (name, time) are given, with their info records."""
    now = time.time() if now is None else now
    workers = []
    for raw_name, last_seen in seen:
        name = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
        raw_info = info.get(raw_name)
        details = json.loads(raw_info) if raw_info else {}
        workers.append(
            WorkerInfo(
                name=name,
                model_version=details.get("model_version"),
                model_versions=details.get("model_versions", []),
                evaluators=details.get("evaluators", {}),
                concurrency=details.get("concurrency", 0),
                seen_s_ago=round(max(0.0, now - last_seen), 3),
            )
        )
    return workers
