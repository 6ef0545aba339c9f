"""The webhook schedule: which concluded jobs' webhooks are due, shared by every worker.

    tripq:webhooks  sorted set: job id -> when its next delivery is due
    TAKE    due ids, each made due again a lease later (a worker dying mid-delivery leaves it)
    RECORD  delivered | failed (dropped from the set) | pending (due again after a wait)

A job enters the set when it concludes with a callback_url (core.jobs.store's CONCLUDE script);
core.jobs.delivery POSTs what is due.
"""

import time
from dataclasses import dataclass
from typing import Any

import redis

from core.jobs.store import VIEW_FIELDS, WEBHOOKS_KEY, job_key, job_view, view_fields

# KEYS: webhooks. ARGV: now, lease, most. Takes up to `most` deliveries that are due, and makes
# each due again `lease` seconds later: a worker that dies while delivering leaves it to another.
_TAKE_DELIVERIES = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
end
return due
"""


# KEYS: job, webhooks. ARGV: id, callback state, attempt, error, when due again (if pending).
# A job removed meanwhile (its result expired) is not written back as a stray hash.
_RECORD_DELIVERY = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
redis.call('HSET', KEYS[1], 'callback_state', ARGV[2], 'callback_attempts', ARGV[3],
           'callback_error', ARGV[4])
if ARGV[2] == 'pending' then
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 1
"""


# Read with the view, never part of it: the job's own signing secret (core.jobs.webhooks).
_SECRET_FIELD = "callback_secret"  # noqa: S105 (a field name)


@dataclass(frozen=True, slots=True)
class DueWebhook:
    """A webhook to deliver: the job's view (the body) and the secret that signs it (None: the
    job has none of its own)."""

    view: dict[str, Any]
    secret: str | None


class WebhookQueue:
    """The deliveries that are due, shared by every worker (blocking client)."""

    def __init__(self, client: redis.Redis, *, max_attempts: int) -> None:
        self._client = client
        self._max_attempts = max_attempts
        self._take = client.register_script(_TAKE_DELIVERIES)
        self._record = client.register_script(_RECORD_DELIVERY)

    def take(self, lease_s: float, most: int) -> list[str]:
        """Take the ids of up to `most` jobs whose webhook is due, for `lease_s` seconds."""
        due = self._take(keys=[WEBHOOKS_KEY], args=[time.time(), lease_s, most])
        return [job_id.decode() for job_id in due]

    def job(self, job_id: str) -> DueWebhook | None:
        """Give the webhook of the job to deliver, or None (and drop the delivery) when the job
        is gone."""
        *values, secret = self._client.hmget(job_key(job_id), [*VIEW_FIELDS, _SECRET_FIELD])
        fields = view_fields(values)
        if "state" not in fields or "callback_url" not in fields:
            self._client.zrem(WEBHOOKS_KEY, job_id)
            return None
        own = secret.decode() if isinstance(secret, bytes) else secret
        return DueWebhook(job_view(job_id, fields), own or None)

    def record(
        self, job_id: str, attempt: int, error: str, retry_in_s: float, *, final: bool = False
    ) -> str:
        """Record delivery `attempt` ('' error: delivered; `final`: no retry); return the
        callback's state now."""
        if not error:
            state = "delivered"
        elif final or attempt >= self._max_attempts:
            state = "failed"
        else:
            state = "pending"
        self._record(
            keys=[job_key(job_id), WEBHOOKS_KEY],
            args=[job_id, state, attempt, error, time.time() + retry_in_s],
        )
        return state
