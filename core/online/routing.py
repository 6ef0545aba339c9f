"""Which model versions serve, kept in Redis so that every worker and API process follows it.

    tripq:models          hash: current, previous, canary, canary_share
    tripq:models:queued   set: every version whose queues workers have consumed (so that the
                          queues of a version no longer served are found and swept:
                          core.worker.sweeper)

`tripq models promote | canary | rollback` write it (after checking the artifact); workers read it
every second, load what it names, and only then serve it; API processes read it every half
second to route requests. Without it (a fresh Redis), CURRENT in the artifact directory (or
SERVING_VERSION) names the current version, as before.

Routing of one request, in the API:

    X-Model-Version: V     -> queue tasks.trip@V, consumed only by workers holding V
    else, canary share     -> queue tasks.trip@<canary>, same
    else                   -> queue tasks.trip, answered by any worker with its current model
    an async job pinned to V -> queue tasks.trip.jobs@V, also consumed by the workers holding V

so a pinned or canary request is only ever taken by a worker that holds its version, and a
fleet midway through a promotion answers unpinned requests with the old or the new current
version (each reply names which).
"""

from collections.abc import Mapping
from dataclasses import dataclass

ROUTING_KEY = "tripq:models"
QUEUED_VERSIONS_KEY = "tripq:models:queued"


def version_queue(queue: str, version: str) -> str:
    """Name the queue of the tasks that only version `version` may answer."""
    return f"{queue}@{version}"


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    return text or None


@dataclass(frozen=True)
class Routing:
    """The versions that serve: the current one, the one before it, and a canary with its share."""

    current: str | None = None
    previous: str | None = None
    canary: str | None = None
    canary_share: float = 0.0

    @classmethod
    def from_hash(cls, raw: Mapping[bytes | str, bytes | str]) -> "Routing":
        """Read the routing from the Redis hash's fields (empty: no routing written yet)."""
        fields = {_text(k): _text(v) for k, v in raw.items()}
        canary = fields.get("canary")
        try:
            share = float(fields.get("canary_share") or 0.0)
        except ValueError:
            share = 0.0
        return cls(
            current=fields.get("current"),
            previous=fields.get("previous"),
            canary=canary,
            canary_share=min(max(share, 0.0), 1.0) if canary else 0.0,
        )

    def to_hash(self) -> dict[str, str]:
        """Write the routing as the Redis hash's fields."""
        return {
            "current": self.current or "",
            "previous": self.previous or "",
            "canary": self.canary or "",
            "canary_share": repr(self.canary_share if self.canary else 0.0),
        }

    @property
    def versions(self) -> list[str]:
        """The versions workers keep loaded: current, canary and previous (for a quick rollback)."""
        named = (self.current, self.canary, self.previous)
        return list(dict.fromkeys(v for v in named if v))

    def promoted(self, version: str) -> "Routing":
        """The routing once `version` is current (a canary of that version is done)."""
        previous = self.current if self.current != version else self.previous
        keep_canary = self.canary if self.canary != version else None
        return Routing(version, previous, keep_canary, self.canary_share if keep_canary else 0.0)

    def with_canary(self, version: str | None, share: float) -> "Routing":
        """The routing with `version` answering `share` of unpinned requests (None: no canary)."""
        if version is None or share <= 0:
            return Routing(self.current, self.previous)
        return Routing(self.current, self.previous, version, min(share, 1.0))

    def rolled_back(self) -> "Routing":
        """The routing with the previous version current again, and no canary."""
        if self.previous is None:
            raise ValueError("there is no previous version to roll back to")
        return Routing(self.previous, self.current)
