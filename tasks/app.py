"""The Celery app shared by workers and by tools that inspect them (`celery -A tasks.app ...`)."""

from celery import Celery

from config import get_settings

settings = get_settings()

# Kombu's Redis transport polls with BRPOP for about a second; a socket timeout below that would
# turn every idle poll into a connection error.
_BROKER_SOCKET_TIMEOUT_S = max(settings.redis_socket_timeout_s, 5.0)

app = Celery(
    "tripq",
    broker=settings.broker_url,
    backend=settings.result_backend,
    include=["tasks.trip.tasks", "tasks.worker"],
)
app.conf.update(
    # JSON only, both ways: a worker never unpickles what it reads from Redis.
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    task_default_queue=settings.queue,
    task_routes={"tasks.trip.*": {"queue": settings.queue}},
    result_expires=settings.result_ttl_s,
    # One result backend (and Redis connection pool) per process. By default Celery keeps one per
    # thread, and under gevent every greenlet is a thread: each task would open a new connection.
    result_backend_thread_safe=True,
    # A task is acknowledged after it ran, and given back to the queue if its worker dies mid-task.
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
    broker_connection_timeout=settings.redis_connect_timeout_s,
    broker_transport_options={
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        "socket_timeout": _BROKER_SOCKET_TIMEOUT_S,
        "socket_keepalive": True,
        "retry_on_timeout": True,
    },
    redis_socket_connect_timeout=settings.redis_connect_timeout_s,
    redis_socket_timeout=settings.redis_socket_timeout_s,
    redis_socket_keepalive=True,
    redis_retry_on_timeout=True,
)
