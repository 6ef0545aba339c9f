"""Async jobs in Redis: one hash per job, moved through its states by atomic scripts.

    POST /v1/trip/jobs ─ CREATE ─> tripq:job:<id> {state: queued, payload, ...}
                                   + its task on the jobs queue       (one script: both or none)
    worker ─ CLAIM ──> running ─ predict ─ CONCLUDE ─> succeeded | failed
    DELETE ─ CANCEL ─> canceled            (queued only)
    a read or a claim past expires_at ───> expired   (never started in time; its task message
                                          expires too, and the worker that discards it SETTLEs)
    SWEEP of a retired version's queue ──> failed    (the pinned version is no longer served)
    ... past started_at + run timeout ───> failed    (its worker and its task were lost)
                     concluded, with a callback_url ─> tripq:webhooks (core.jobs.schedule)

Every transition is one Lua script, so a job never has two states at once: a cancel and a claim
racing for one queued job see each other's outcome, and a job and its task message are written
together or not at all (a Redis full at maxmemory refuses the script before its first write:
the API answers 503 and no job exists). A concluded job stays readable for JOB_RESULT_TTL_S,
then its key expires and its id answers 404. With Redis's append-only file on, an accepted job
survives a Redis restart, and its task, taken by a worker that dies, goes back to the queue
(core.worker.restorer).

A job belongs to its owner (a digest of the API key that created it, "" without API_KEYS): READ
and CANCEL see only their caller's jobs, so another key gets 404. Each owner has a quota,
checked by CREATE in the same script: jobs open (queued or running) and bytes kept (payloads of
open jobs, results of ended ones), counted in three keys of its own that expire with its last job:

    tripq:owner:<owner>:open   sorted set: job id -> the latest it can still be open
    tripq:owner:<owner>:kept   sorted set: job id -> when its hash expires
    tripq:owner:<owner>:bytes  hash: job id -> bytes it holds; `total`: their sum

A job's payload is dropped when it ends; from then it holds only its result.

The API (asyncio) and the workers (gevent, blocking client) share the scripts and the keys here;
the webhook schedule's own scripts live in core.jobs.schedule.
"""

import hashlib
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import redis
from redis.asyncio import Redis as AsyncRedis

from config import Settings
from core.errors import BackendUnavailable, Overloaded
from core.jobs.schemas import JobState
from core.online import protocol
from core.online.broker import refused_as_unavailable

RUN_JOB_TASK = "tasks.trip.jobs.run_job"
_JOB_TASK_PREFIX = "job-"  # a job's task id: the prefix, then the job id

JOB_KEY_PREFIX = "tripq:job:"
OWNER_KEY_PREFIX = "tripq:owner:"
IDEMPOTENCY_KEY_PREFIX = "tripq:job-key:"
WEBHOOKS_KEY = "tripq:webhooks"  # sorted set: job id -> when its next delivery is due

JOB_ID = re.compile(r"[0-9a-f]{32}")
# How long a new job waits for JOBS_MIN_REPLICAS replicas to hold it before it is refused (503).
REPLICA_WAIT_S = 1.0


# The fields a reader sees; the payload (the trips) stays in Redis for the worker.
VIEW_FIELDS = (
    "state",
    "trips",
    "created_at",
    "started_at",
    "finished_at",
    "expires_at",
    "kept_until",
    "model_version",
    "result",
    "error",
    "callback_url",
    "callback_state",
    "callback_attempts",
    "callback_error",
)

# Lua shared by the scripts. `keep_owner_keys`: an owner's quota keys live as long as its
# longest-kept job. `conclude`: end a job in `state` and keep it `ttl` seconds, its payload
# dropped and its owner's count and bytes updated; a job with a callback is queued for delivery,
# except when its own client canceled it.
_CONCLUDE = """
local function owner_keys(owner)
  local prefix = 'OWNER_KEY_PREFIX' .. owner
  return prefix .. ':open', prefix .. ':kept', prefix .. ':bytes'
end
local function keep_owner_keys(ttl, ...)
  for _, name in ipairs({...}) do
    if redis.call('TTL', name) < ttl then
      redis.call('EXPIRE', name, ttl)
    end
  end
end
local function conclude(key, id, state, now, ttl, webhooks)
  redis.call('HSET', key, 'state', state, 'finished_at', now, 'kept_until', now + ttl)
  redis.call('EXPIRE', key, ttl)
  redis.call('HDEL', key, 'payload')
  local open, kept, bytes = owner_keys(redis.call('HGET', key, 'owner') or '')
  redis.call('ZREM', open, id)
  local counted = redis.call('HGET', bytes, id)
  if counted then
    local held = redis.call('HSTRLEN', key, 'result')
    redis.call('HSET', bytes, id, held)
    redis.call('HINCRBY', bytes, 'total', held - tonumber(counted))
    redis.call('ZADD', kept, now + ttl, id)
    keep_owner_keys(ttl, kept, bytes)
  end
  if state ~= 'canceled' and redis.call('HEXISTS', key, 'callback_url') == 1 then
    redis.call('HSET', key, 'callback_state', 'pending')
    redis.call('ZADD', webhooks, now, id)
  end
end
local function expire_if_due(key, id, now, ttl, webhooks, run_timeout)
  local state = redis.call('HGET', key, 'state')
  if state == 'queued' and tonumber(redis.call('HGET', key, 'expires_at')) <= now then
    conclude(key, id, 'expired', now, ttl, webhooks)
    return 'expired'
  end
  local started = tonumber(redis.call('HGET', key, 'started_at'))
  if state == 'running' and started + run_timeout <= now then
    redis.call('HSET', key, 'error', 'the worker running the job was lost, and its task with it')
    conclude(key, id, 'failed', now, ttl, webhooks)
    return 'failed'
  end
  return state
end
""".replace("OWNER_KEY_PREFIX", OWNER_KEY_PREFIX)

# KEYS: job, idempotency key or '', jobs queue, webhooks.
# ARGV: id, max queued, ttl, message, body hash, owner, now, most open per owner, most bytes per
# owner, the job's bytes, the latest it can be open, then the job's fields as name, value pairs.
# Returns {id, body hash} of the job (an existing one for a known idempotency key), {'full'},
# {'open', count} or {'bytes', total} when the queue or the owner's quota has no room.
_CREATE = (
    _CONCLUDE
    + """
if KEYS[2] ~= '' then
  local known = redis.call('GET', KEYS[2])
  if known and redis.call('EXISTS', 'JOB_KEY_PREFIX' .. known) == 1 then
    return {known, redis.call('HGET', 'JOB_KEY_PREFIX' .. known, 'body_sha')}
  end
end
if redis.call('LLEN', KEYS[3]) >= tonumber(ARGV[2]) then
  return {'full'}
end
local id, ttl, now, size = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[7]), tonumber(ARGV[10])
local open, kept, bytes = owner_keys(ARGV[6])
-- Reads first: the job's HSET must be the script's first write, for a Redis at maxmemory
-- refuses a script's first write that needs memory, but no later one (the script is atomic).
local count = redis.call('ZCOUNT', open, '(' .. now, '+inf')
if count >= tonumber(ARGV[8]) then
  return {'open', count}
end
-- The owner's jobs whose hashes have expired count no more (a bounded number a call).
local gone = redis.call('ZRANGEBYSCORE', kept, '-inf', now, 'LIMIT', 0, 1000)
local freed = 0
for _, old in ipairs(gone) do
  freed = freed + tonumber(redis.call('HGET', bytes, old) or '0')
end
-- An owner holding nothing may always keep one job, however large: none is refused for good.
local total = tonumber(redis.call('HGET', bytes, 'total') or '0') - freed
if total > 0 and total + size > tonumber(ARGV[9]) then
  return {'bytes', total}
end
redis.call('HSET', KEYS[1], 'body_sha', ARGV[5], 'owner', ARGV[6], unpack(ARGV, 12))
redis.call('EXPIRE', KEYS[1], ttl)
for _, old in ipairs(gone) do
  redis.call('HDEL', bytes, old)
  redis.call('ZREM', kept, old)
end
if freed > 0 then
  redis.call('HINCRBY', bytes, 'total', -freed)
end
redis.call('ZREMRANGEBYSCORE', open, '-inf', now)
if KEYS[2] ~= '' then
  redis.call('SET', KEYS[2], id, 'EX', ttl)
end
redis.call('LPUSH', KEYS[3], ARGV[4])
redis.call('ZADD', open, ARGV[11], id)
redis.call('ZADD', kept, now + ttl, id)
redis.call('HSET', bytes, id, size)
redis.call('HINCRBY', bytes, 'total', size)
keep_owner_keys(ttl, open, kept, bytes)
return {id, ARGV[5]}
""".replace("JOB_KEY_PREFIX", JOB_KEY_PREFIX)
)

# The arguments of READ, CANCEL and CLAIM. KEYS: job, webhooks. ARGV: id, now, ttl, run timeout,
# and for READ and CANCEL the caller's owner.
_JOB_ARGS = """
local id, now, ttl, run_timeout = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
"""

# Lua: whether the job exists and belongs to the caller (a job of another owner is not there).
_OWNED = """
local function owned(key, owner)
  return redis.call('EXISTS', key) == 1 and (redis.call('HGET', key, 'owner') or '') == owner
end
"""

# Returns the view fields, or {} for no such job.
_READ = (
    _CONCLUDE
    + _JOB_ARGS
    + _OWNED
    + """
if not owned(KEYS[1], ARGV[5]) then
  return {}
end
expire_if_due(KEYS[1], id, now, ttl, KEYS[2], run_timeout)
return redis.call('HMGET', KEYS[1], VIEW_FIELDS)
""".replace("VIEW_FIELDS", ", ".join(f"'{name}'" for name in VIEW_FIELDS))
)

# Returns the state the job is in after the call.
_CANCEL = (
    _CONCLUDE
    + _JOB_ARGS
    + _OWNED
    + """
if not owned(KEYS[1], ARGV[5]) then
  return false
end
local state = expire_if_due(KEYS[1], id, now, ttl, KEYS[2], run_timeout)
if state == 'queued' then
  conclude(KEYS[1], id, 'canceled', now, ttl, KEYS[2])
  return 'canceled'
end
return state or false
"""
)

# Returns the state the job is in after the call: expired or failed once its time is up.
_SETTLE = (
    _CONCLUDE
    + _JOB_ARGS
    + """
return expire_if_due(KEYS[1], id, now, ttl, KEYS[2], run_timeout) or false
"""
)

# ARGV[5]: why. Ends a job still waiting for its task (queued, or running with its task back in a
# queue) as failed, for that reason; returns the state the job is in after the call.
_ABANDON = (
    _CONCLUDE
    + _JOB_ARGS
    + """
local state = expire_if_due(KEYS[1], id, now, ttl, KEYS[2], run_timeout)
if state == 'queued' or state == 'running' then
  redis.call('HSET', KEYS[1], 'error', ARGV[5])
  conclude(KEYS[1], id, 'failed', now, ttl, KEYS[2])
  return 'failed'
end
return state or false
"""
)

# Returns {'running', payload, version} when this worker should run the job (a job whose worker
# died is running already, and runs again), else {state}.
_CLAIM = (
    _CONCLUDE
    + _JOB_ARGS
    + """
local state = expire_if_due(KEYS[1], id, now, ttl, KEYS[2], run_timeout)
if state ~= 'queued' and state ~= 'running' then
  return {state or 'missing'}
end
redis.call('HSET', KEYS[1], 'state', 'running', 'started_at', now)
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
local fields = redis.call('HMGET', KEYS[1], 'payload', 'pinned_version')
return {'running', fields[1], fields[2] or ''}
"""
)

# KEYS: job, webhooks. ARGV: id, now, ttl, state, result, error, model version.
_FINISH = (
    _CONCLUDE
    + """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then
  return 0
end
redis.call('HSET', KEYS[1], 'result', ARGV[5], 'error', ARGV[6], 'model_version', ARGV[7])
conclude(KEYS[1], ARGV[1], ARGV[4], tonumber(ARGV[2]), tonumber(ARGV[3]), KEYS[2])
return 1
"""
)


def job_key(job_id: str) -> str:
    """Name the hash that holds a job."""
    return JOB_KEY_PREFIX + job_id


def new_job_id() -> str:
    """Make a job id: 32 hex digits, unguessable."""
    return uuid.uuid4().hex


def job_task_id(job_id: str) -> str:
    """Name the task that runs a job."""
    return _JOB_TASK_PREFIX + job_id


def job_of_task(task_name: str | None, task_id: str | None) -> str | None:
    """Give the id of the job a task runs, or None for a task that runs no job."""
    if task_name != RUN_JOB_TASK or not task_id or not task_id.startswith(_JOB_TASK_PREFIX):
        return None
    return task_id.removeprefix(_JOB_TASK_PREFIX)


def idempotency_key(scope: str, key: str) -> str:
    """Name the key that maps a client's Idempotency-Key (within its API key's scope) to a job."""
    digest = hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()
    return IDEMPOTENCY_KEY_PREFIX + digest


def iso(epoch: str | float | None) -> str | None:
    """Write an epoch time as ISO 8601 in UTC."""
    if epoch in (None, ""):
        return None
    return datetime.fromtimestamp(float(epoch), UTC).isoformat(timespec="milliseconds")


def _job_args(job_id: str, result_ttl_s: int, run_timeout_s: float) -> tuple[list[str], list[Any]]:
    """The keys and arguments of READ, CANCEL and CLAIM for one job, now."""
    return [job_key(job_id), WEBHOOKS_KEY], [job_id, time.time(), result_ttl_s, run_timeout_s]


def view_fields(values: list[Any]) -> dict[str, str]:
    """Name the values read for VIEW_FIELDS, leaving out those the job does not have."""
    if not values:
        return {}
    return {n: v.decode() for n, v in zip(VIEW_FIELDS, values, strict=True) if v is not None}


def job_view(job_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """Describe a job as its readers see it (GET /v1/trip/jobs/{id}, and webhook bodies)."""
    view: dict[str, Any] = {
        "job_id": job_id,
        "state": fields["state"],
        "trips": int(fields.get("trips") or 0),
        "created_at": iso(fields.get("created_at")),
        "started_at": iso(fields.get("started_at")),
        "finished_at": iso(fields.get("finished_at")),
    }
    if JobState(fields["state"]).final:
        view["kept_until"] = iso(fields.get("kept_until"))
    else:
        view["expires_at"] = iso(fields.get("expires_at"))
    if fields.get("result"):
        view["result"] = orjson.loads(fields["result"])
    if fields.get("error"):
        view["error"] = fields["error"]
    if fields.get("callback_url"):
        view["callback"] = {
            "url": fields["callback_url"],
            "state": fields.get("callback_state") or "waiting",
            "attempts": int(fields.get("callback_attempts") or 0),
            "error": fields.get("callback_error") or None,
        }
    return view


class JobStore:
    """The API's side of the jobs: create, read and cancel them (asyncio)."""

    def __init__(self, client: AsyncRedis, settings: Settings, *, origin: str) -> None:
        self._client = client
        self._queue = settings.job_queue
        self._queue_timeout_s = settings.job_queue_timeout_s
        self._result_ttl_s = settings.job_result_ttl_s
        self._run_timeout_s = settings.job_run_timeout_s
        self._max_queued = settings.jobs_max_queued
        self._max_open_per_owner = settings.jobs_max_queued_per_key
        self._max_bytes_per_owner = settings.jobs_max_bytes_per_key
        self._min_replicas = settings.jobs_min_replicas
        self._origin = origin
        self._create = client.register_script(_CREATE)
        self._read = client.register_script(_READ)
        self._cancel = client.register_script(_CANCEL)

    async def create(
        self,
        *,
        payload: dict[str, Any],
        trips: int,
        body_sha: str,
        owner: str,
        idempotency: str | None,
        callback_url: str | None,
        callback_secret: str | None,
        version: str | None,
        job_queue: str | None = None,
    ) -> tuple[str, str]:
        """Accept a job of `owner` and queue its task; return (job id, body hash). With an
        `idempotency` key already used, the job it names is returned instead, with the hash of
        the body that created it. Raise Overloaded when the queue or the owner's quota is full."""
        job_id = new_job_id()
        now = time.time()
        # To the microsecond, as the message's expiry says it: both end the job's queueing at once.
        expires = datetime.fromtimestamp(now + self._queue_timeout_s, UTC)
        encoded = orjson.dumps(payload).decode()
        fields: dict[str, str | float | int] = {
            "state": JobState.QUEUED,
            "trips": trips,
            "payload": encoded,
            "created_at": now,
            "expires_at": expires.timestamp(),
        }
        if callback_url:
            fields["callback_url"] = callback_url
        if callback_secret:
            fields["callback_secret"] = callback_secret
        if version:
            fields["pinned_version"] = version
        queue = job_queue or self._queue
        message = protocol.encode_task(
            task_id=job_task_id(job_id),
            task_name=RUN_JOB_TASK,
            queue=queue,
            args=[job_id],
            kwargs={"sent_at": now},
            # A message no worker took in time is discarded unrun, not kept and run for nothing
            # (the job is expired by then); the worker that discards it settles the job.
            expires=expires,
            origin=self._origin,
            ignore_result=True,
        )
        ttl = int(self._queue_timeout_s) + self._result_ttl_s
        flat = [str(x) for pair in fields.items() for x in pair]
        with refused_as_unavailable():
            # One connection for the script and the WAIT: WAIT counts this connection's writes.
            async with self._client.pipeline(transaction=False) as pipe:
                await self._create(
                    keys=[job_key(job_id), idempotency or "", queue, WEBHOOKS_KEY],
                    args=[
                        job_id,
                        self._max_queued,
                        ttl,
                        message,
                        body_sha,
                        owner,
                        now,
                        self._max_open_per_owner,
                        self._max_bytes_per_owner,
                        len(encoded),
                        # A job ends by then at the latest: expired unstarted, or failed running.
                        expires.timestamp() + self._run_timeout_s,
                        *flat,
                    ],
                    client=pipe,
                )
                if self._min_replicas:
                    pipe.execute_command("WAIT", self._min_replicas, int(REPLICA_WAIT_S * 1000))
                answer, *copies = await pipe.execute()
        _raise_if_refused(answer, self._max_queued)
        if copies and copies[0] < self._min_replicas:
            # The master holds the job, and a worker may run it; a failover now could lose it.
            # The client is told so; its retry with the same Idempotency-Key finds the job if
            # it survived, or makes it anew if it did not.
            raise BackendUnavailable(
                f"the job reached {copies[0]} of {self._min_replicas} Redis replicas in time; "
                "retry with the same Idempotency-Key"
            )
        return answer[0].decode(), answer[1].decode()

    async def read(self, job_id: str, owner: str) -> dict[str, Any] | None:
        """Give the view of a job of `owner`, or None when it has no such job."""
        if not JOB_ID.fullmatch(job_id):
            return None
        keys, args = _job_args(job_id, self._result_ttl_s, self._run_timeout_s)
        with refused_as_unavailable():
            values = await self._read(keys=keys, args=[*args, owner])
        fields = view_fields(values or [])
        return job_view(job_id, fields) if "state" in fields else None

    async def callback_secret(self, job_id: str) -> str | None:
        """Give the secret a job's webhooks are signed with, when it has one of its own."""
        with refused_as_unavailable():
            secret = await self._client.hget(job_key(job_id), "callback_secret")
        return secret.decode() if isinstance(secret, bytes) else None

    async def cancel(self, job_id: str, owner: str) -> str | None:
        """Cancel a job of `owner` not yet started; return the state it is in afterwards (None:
        `owner` has no such job)."""
        if not JOB_ID.fullmatch(job_id):
            return None
        keys, args = _job_args(job_id, self._result_ttl_s, self._run_timeout_s)
        with refused_as_unavailable():
            state = await self._cancel(keys=keys, args=[*args, owner])
        return state.decode() if state else None


def _raise_if_refused(answer: list[Any], max_queued: int) -> None:
    """Raise Overloaded when CREATE found no room: in the queue, or in the owner's quota."""
    match answer[0]:
        case b"full":
            raise Overloaded(f"{max_queued} jobs are queued already; retry later")
        case b"open":
            raise Overloaded(
                f"this API key has {answer[1]} jobs queued or running, its most "
                "(JOBS_MAX_QUEUED_PER_KEY); retry once some have ended"
            )
        case b"bytes":
            raise Overloaded(
                f"this API key keeps {answer[1]} bytes of jobs, its most with this one "
                "(JOBS_MAX_BYTES_PER_KEY); retry once some have ended or expired"
            )


class JobRunner:
    """The workers' side of the jobs: claim one, and record how it ended (blocking client)."""

    def __init__(self, client: redis.Redis, *, result_ttl_s: int, run_timeout_s: float) -> None:
        self._result_ttl_s = result_ttl_s
        self._run_timeout_s = run_timeout_s
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)
        self._settle = client.register_script(_SETTLE)
        self._abandon = client.register_script(_ABANDON)

    def claim(self, job_id: str) -> tuple[dict[str, Any], str | None] | str:
        """Start a job: its payload and pinned version, or the state that keeps it from running."""
        answer = self._claim(*_job_args(job_id, self._result_ttl_s, self._run_timeout_s))
        if answer[0] != b"running":
            return str(answer[0].decode())
        version = answer[2].decode() or None
        return orjson.loads(answer[1]), version

    def settle(self, job_id: str) -> str | None:
        """Conclude a job whose time is up (its task expired unrun): expired, or failed when it
        ran past its run timeout; return its state (None: no such job)."""
        state = self._settle(*_job_args(job_id, self._result_ttl_s, self._run_timeout_s))
        return state.decode() if state else None

    def abandon(self, job_id: str, error: str) -> str | None:
        """Conclude a job whose task will never run as failed with `error`, unless it has ended
        already; return its state (None: no such job)."""
        keys, args = _job_args(job_id, self._result_ttl_s, self._run_timeout_s)
        state = self._abandon(keys=keys, args=[*args, error])
        return state.decode() if state else None

    def finish(
        self,
        job_id: str,
        state: JobState,
        *,
        result: dict[str, Any] | None = None,
        error: str = "",
        model_version: str = "",
    ) -> bool:
        """Record a running job's end; False when it was not running (nothing written)."""
        done = self._finish(
            keys=[job_key(job_id), WEBHOOKS_KEY],
            args=[
                job_id,
                time.time(),
                self._result_ttl_s,
                state,
                orjson.dumps(result).decode() if result is not None else "",
                error,
                model_version,
            ],
        )
        return bool(done)
