"""What a worker process runs beside its tasks, each made once per process, lazily.

    Celery's worker_ready (tasks.worker)
        model shelf loads ─> RoutingFollower.follow()      once, before the first heartbeat
        threads (greenlets under gevent), until `stopping` is set at worker_shutdown:
            Heartbeat.run          zadd tripq:workers + hset its info, every WORKER_HEARTBEAT_S
            RoutingFollower.run    routing hash ─> shelf.follow ─> add/cancel version queues
            AbandonedTaskRestorer  kombu's restore_visible: a dead worker's unacked tasks back
            StrandedTaskSweeper    a retired version's queues emptied: online tasks dropped,
                                   pinned jobs failed ("no longer served")
            WebhookDelivery.run    (core.jobs.delivery) due webhooks, POSTed signed
    Celery's worker_shutdown ─> say_goodbye: the heartbeat removed at once

    process.py    per-process resources: broker client, model shelf, job runner, deliverer
    heartbeat.py  Heartbeat, say_goodbye
    follower.py   RoutingFollower (FOLLOW_EVERY_S)
    restorer.py   AbandonedTaskRestorer (RESTORE_EVERY_S)
    sweeper.py    StrandedTaskSweeper (SWEEP_EVERY_S)
    metrics.py    the worker's Prometheus metrics

tasks/ wires these to Celery's signals and nothing more; nothing here opens a connection at import.
"""
