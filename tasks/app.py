"""The Celery app shared by workers and by tools that inspect them (`celery -A tasks.app ...`)."""

from typing import Any

from celery import Celery
from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher

from config import Settings, get_settings
from core.infra.redis_clients import transport_options

settings = get_settings()

# Kombu's Redis transport polls with BRPOP for about a second; a socket timeout below that would
# turn every idle poll into a connection error.
_BROKER_SOCKET_TIMEOUT_S = max(settings.redis_socket_timeout_s, 5.0)

# Slack on top of the longest deadline: a task that starts just before its expiry still runs (a
# few milliseconds; more on a starved CPU) before it is acknowledged.
VISIBILITY_MARGIN_S = 5.0
# A sweep that holds kombu's restore mutex and dies leaves it locked this long (seconds, an int
# for Redis's EX); kombu's default, 300 s, would stop all restores for five minutes. A shorter one
# is safe: each message is restored in a transaction that no second sweeper can repeat.
_RESTORE_MUTEX_EXPIRE_S = 5


def visibility_timeout_s(settings: Settings) -> float:
    """Say how long a taken task may stay unacknowledged before it goes back to its queue.

    Sized against the longest task: every task expires with its request's deadline, at most
    REQUEST_TIMEOUT_MAX_S after it was sent, and a worker that takes it later discards it at
    once. So a live worker never holds a task longer than that plus the margin, and only the
    tasks of a dead worker are given back (core.worker.restorer). Shorter, a slow worker's tasks
    would run twice; longer (kombu's default is an hour), a dead worker's would wait for it.
    """
    return settings.request_timeout_max_s + VISIBILITY_MARGIN_S


# How long an event (the worker-heartbeat events Flower reads) keeps trying a lost broker.
_EVENT_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.5, "interval_step": 0.5}


class BoundedEventDispatcher(EventDispatcher):  # type: ignore[misc]
    """Celery's event dispatcher, giving up on an event after a few tries instead of never.

    Celery publishes each worker-heartbeat event with kombu's default retry policy, which retries
    a lost broker forever while it holds the dispatcher's lock; a warm shutdown waits for that
    lock, so a worker told to stop while Redis was down never exited. An event that cannot be
    sent is not tried further: the next heartbeat comes two seconds later.
    """

    def send(self, type: str, *args: Any, retry_policy: Any = None, **kwargs: Any) -> Any:
        return super().send(type, *args, retry_policy=retry_policy or _EVENT_RETRY_POLICY, **kwargs)


class BoundedEvents(Events):  # type: ignore[misc]
    dispatcher_cls = BoundedEventDispatcher


app = Celery(
    "tripq",
    broker=settings.broker_url,
    backend=settings.result_backend,
    include=["tasks.trip.tasks", "tasks.trip.jobs", "tasks.worker"],
    events=BoundedEvents,
)
app.conf.update(
    # JSON only, both ways: a worker never unpickles what it reads from Redis.
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    task_default_queue=settings.queue,
    task_routes={
        "tasks.trip.jobs.*": {"queue": settings.job_queue},
        "tasks.trip.*": {"queue": settings.queue},
    },
    result_expires=settings.result_ttl_s,
    # One result backend (and Redis connection pool) per process. By default Celery keeps one per
    # thread, and under gevent every greenlet is a thread: each task would open a new connection.
    result_backend_thread_safe=True,
    # A task is acknowledged after it ran, and given back to the queue if its worker dies
    # mid-task: at once when a pool child dies (reject_on_worker_lost, for a prefork pool), and
    # after the visibility timeout when the worker process itself is killed (core.worker.restorer).
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # No prefetch limit: the gevent pool itself blocks the consumer when all greenlets are busy.
    # A limit would stall the gevent worker's synchronous consumer loop for up to 2 s each time
    # it is reached (acks are deferred to the next loop turn, which waits on an idle socket).
    worker_prefetch_multiplier=0,
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,
    worker_send_task_events=False,
    task_send_sent_event=False,
    broker_connection_retry_on_startup=True,
    # Retry a lost broker for as long as it takes (Celery's default gives up after 100 attempts
    # and the worker exits), every second rather than backing off to 30 s (tasks.worker).
    broker_connection_max_retries=None,
    worker_consumer="tasks.worker:PromptReconnectConsumer",
    broker_connection_timeout=settings.redis_connect_timeout_s,
    broker_transport_options={
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        "socket_timeout": _BROKER_SOCKET_TIMEOUT_S,
        "socket_keepalive": True,
        "retry_on_timeout": True,
        "visibility_timeout": visibility_timeout_s(settings),
        "unacked_mutex_expire": _RESTORE_MUTEX_EXPIRE_S,
        # The master's name, for sentinel:// URLs (core.infra.redis_clients).
        **transport_options(settings, settings.broker_url),
    },
    result_backend_transport_options=transport_options(settings, settings.result_backend),
    # Both empty unless the URL is rediss:// (see config.Settings.redis_tls).
    broker_use_ssl=settings.redis_tls(settings.broker_url) or None,
    redis_backend_use_ssl=settings.redis_tls(settings.result_backend) or None,
    redis_socket_connect_timeout=settings.redis_connect_timeout_s,
    redis_socket_timeout=settings.redis_socket_timeout_s,
    redis_socket_keepalive=True,
    redis_retry_on_timeout=True,
)
