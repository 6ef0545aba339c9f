"""tripq's settings: one class, read from the environment and `.env`; nothing else reads either."""

import os
import ssl
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    FilePath,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent

REDIS_SCHEMES = ("redis", "rediss", "unix", "sentinel")


class Settings(BaseSettings):
    """Every knob of the API, the workers and the CLI, with defaults that run on a laptop."""

    model_config = SettingsConfigDict(
        env_file=PROJECT_ROOT / ".env",
        env_file_encoding="utf-8",
        extra="ignore",
        protected_namespaces=(),
    )

    # --- Redis: one knob, with the older service's two Celery overrides honoured ---
    redis_url: str = "redis://127.0.0.1:6379/0"
    celery_broker_url: str | None = None
    celery_result_backend: str | None = None
    redis_sentinel_master: str = Field(
        default="mymaster",
        description="For sentinel:// URLs: the name of the master Sentinel watches.",
    )
    redis_connect_timeout_s: PositiveFloat = 1.0
    redis_socket_timeout_s: PositiveFloat = 2.0
    # TLS, for rediss:// URLs: the server's certificate is always verified (against this CA bundle,
    # or the system's); a client certificate is sent when Redis asks for one (tls-auth-clients).
    redis_tls_ca_file: FilePath | None = Field(
        default=None, description="CA bundle that signed Redis's certificate; default: system's."
    )
    redis_tls_cert_file: FilePath | None = Field(
        default=None, description="Client certificate for Redis over TLS, with its key file."
    )
    redis_tls_key_file: FilePath | None = Field(
        default=None, description="Private key of REDIS_TLS_CERT_FILE."
    )

    # --- The queue and the wait ---
    queue: str = "tasks.trip"
    request_timeout_s: PositiveFloat = Field(
        default=5.0, description="Deadline of a synchronous prediction; also its task's expiry."
    )
    batch_max_size: PositiveInt = Field(
        default=256, description="Most single-trip requests one micro-batch task carries."
    )
    batch_max_in_flight: PositiveInt = Field(
        default=2, description="Micro-batch tasks an API process has out at once; more wait."
    )
    batch_chunk_size: PositiveInt = Field(
        default=5000, description="Most trips of a /predict/batch request one task carries."
    )
    request_timeout_max_s: PositiveFloat = Field(
        default=30.0, description="Cap on the deadline a client may ask for (X-Request-Timeout)."
    )
    max_pending_requests: PositiveInt = Field(
        default=100_000,
        description="Trips one API process may hold waiting for answers; beyond it, 429.",
    )
    queue_max_depth: PositiveInt = Field(
        default=2000, description="Tasks waiting in the queue beyond which the API answers 429."
    )
    max_body_bytes: PositiveInt = Field(
        default=4 * 1024 * 1024, description="Largest request body accepted; larger ones, 413."
    )
    api_keys: SecretStr = Field(
        default=SecretStr(""),
        description="Comma-separated API keys for the predict endpoints; empty means open.",
    )
    result_ttl_s: PositiveInt = Field(
        default=600, description="How long an unread task result stays in Redis."
    )

    # --- Async jobs (POST /v1/trip/jobs) and their webhooks ---
    job_queue: str = Field(
        default="tasks.trip.jobs", description="Queue of async jobs, apart from the online one."
    )
    job_queue_timeout_s: PositiveFloat = Field(
        default=3600.0, description="A job not started within this is expired, never run."
    )
    job_run_timeout_s: PositiveFloat = Field(
        default=300.0,
        description="A job running this long without an end lost its worker and its task: "
        "failed. Longer than REQUEST_TIMEOUT_MAX_S + 10 (a lost worker's task is rerun by then).",
    )
    job_result_ttl_s: PositiveInt = Field(
        default=86_400, description="How long a finished job and its result stay readable."
    )
    jobs_max_queued: PositiveInt = Field(
        default=10_000, description="Jobs waiting in their queue beyond which new ones get 429."
    )
    jobs_max_queued_per_key: PositiveInt = Field(
        default=1000,
        description="Jobs one API key may have queued or running at once; beyond it, 429. "
        "Without API_KEYS every client shares one quota.",
    )
    jobs_max_bytes_per_key: PositiveInt = Field(
        default=64 * 1024 * 1024,
        description="Bytes of payloads and results one API key may keep in Redis at once; "
        "beyond it, 429.",
    )
    jobs_min_replicas: NonNegativeInt = Field(
        default=0,
        description="Replicas that must hold a new job before it is accepted (Redis WAIT); 0: "
        "the master's copy is enough. 1 with a Sentinel replica: a failover loses no accepted "
        "job.",
    )
    webhook_secret: SecretStr = Field(
        default=SecretStr(""),
        description="Secret that signs the webhooks of jobs that bring none (HMAC-SHA256); "
        "empty: each such job gets a secret of its own, given in its 202 reply.",
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="Let webhooks go to private, loopback, link-local and other "
        "special-purpose addresses.",
    )
    webhook_ports: str = Field(
        default="80,443",
        description="Ports a callback_url may name, comma-separated; `*`: any port.",
    )
    webhook_max_attempts: PositiveInt = Field(
        default=8, description="Deliveries of one webhook before it is given up as failed."
    )
    webhook_timeout_s: PositiveFloat = Field(
        default=5.0,
        description="Most time one webhook delivery takes in all: connect, send, and the "
        "receiver's status line and headers.",
    )
    webhook_deliveries_at_once: PositiveInt = Field(
        default=8, description="Webhook deliveries one worker process makes at once."
    )

    # --- API ---
    api_host: str = "127.0.0.1"
    api_port: PositiveInt = 8182
    api_workers: PositiveInt = 2
    api_access_log: bool = False
    forwarded_allow_ips: str = Field(
        default="127.0.0.1",
        description="Addresses of the proxies whose X-Forwarded-For and X-Forwarded-Proto the "
        "API believes (comma-separated; `*`: any): the client's address in logs is then the "
        "one the proxy saw.",
    )
    grpc_host: str = "127.0.0.1"
    grpc_port: PositiveInt = Field(
        default=50051, description="Where `tripq grpc` serves tripq.v1.TripService."
    )
    otel_exporter_otlp_endpoint: str = Field(
        default="",
        description="OTLP/HTTP endpoint that traces are exported to (e.g. http://jaeger:4318); "
        "empty: no tracing, at no cost.",
    )
    otel_service_name: str = Field(
        default="tripq", description="The service name traces carry (`-api`, `-worker` ... added)."
    )
    status_detail: bool = Field(
        default=False,
        description="Let /ready name each worker (host, versions, evaluator) and /health the "
        "model versions served; off, they say only whether the service is up and ready.",
    )

    # --- Workers ---
    worker_processes: PositiveInt = 2
    worker_concurrency: PositiveInt = 32
    worker_heartbeat_s: PositiveFloat = 2.0
    worker_ttl_s: PositiveFloat = 10.0
    inference_threads: PositiveInt = 4
    worker_metrics_host: str = Field(
        default="127.0.0.1",
        description="Address the workers' Prometheus /metrics listen on; in a container, its "
        "own address (compose and Kubernetes set it).",
    )
    worker_metrics_port: NonNegativeInt = Field(
        default=9400,
        description="Worker process n serves Prometheus /metrics on this port + n - 1; 0: off.",
    )

    # --- Models ---
    artifact_dir: Path = PROJECT_ROOT / "repo" / "models"
    serving_version: str | None = Field(
        default=None,
        description="Model version the workers load; empty means the one named in CURRENT.",
    )
    tlc_base_url: str = "https://d37ci6vzurychx.cloudfront.net/trip-data"
    zones_file: Path = Field(
        default=PROJECT_ROOT / "repo" / "reference" / "taxi_zone_lookup.csv",
        description="The TLC taxi zone lookup that `tripq train` reads; one ships with tripq.",
    )
    data_dir: Path = PROJECT_ROOT / "repo" / "data"
    tree_compiler: str = Field(
        default="gcc",
        description="C compiler that builds a gbm's trees into a library (gcc or clang); empty: "
        "serve with scikit-learn's evaluator.",
    )
    tree_cache_dir: Path = Field(
        default=PROJECT_ROOT / "repo" / "cache" / "trees",
        description="Where compiled trees are kept, by artifact sha256; private to its user.",
    )
    inference_device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
        description="Where a worker evaluates a gbm's large batches: `auto` (a GPU if PyTorch "
        "sees one, else the CPU), `cpu`, or `cuda` / `cuda:N` (refuses to start without it).",
    )
    accelerator_min_batch: PositiveInt = Field(
        default=1000,
        description="Fewest trips in one call that go to the GPU; smaller calls stay on the CPU.",
    )

    # --- Logging and the embedded Redis of `tripq up` ---
    log_dir: Path = PROJECT_ROOT / "repo" / "logs"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False
    embedded_redis_dir: Path = PROJECT_ROOT / "repo" / "redis"

    @field_validator("redis_url", "celery_broker_url", "celery_result_backend")
    @classmethod
    def _must_be_redis(cls, url: str | None) -> str | None:
        if url is not None and urlsplit(url).scheme not in REDIS_SCHEMES:
            raise ValueError(f"must be a Redis URL ({', '.join(REDIS_SCHEMES)}), got {url!r}")
        return url

    @model_validator(mode="after")
    def _default_deadline_within_cap(self) -> "Settings":
        # Tasks are sized against the cap (tasks.app.visibility_timeout_s): a longer default
        # deadline would let a live worker's task be given back to the queue and run twice.
        if self.request_timeout_s > self.request_timeout_max_s:
            raise ValueError(
                f"REQUEST_TIMEOUT_S ({self.request_timeout_s:g}) must not exceed "
                f"REQUEST_TIMEOUT_MAX_S ({self.request_timeout_max_s:g})"
            )
        return self

    @model_validator(mode="after")
    def _job_outlives_redelivery(self) -> "Settings":
        if self.job_run_timeout_s <= self.request_timeout_max_s + 10:
            raise ValueError("JOB_RUN_TIMEOUT_S must exceed REQUEST_TIMEOUT_MAX_S + 10")
        return self

    @field_validator("otel_exporter_otlp_endpoint")
    @classmethod
    def _otlp_url(cls, endpoint: str) -> str:
        parts = urlsplit(endpoint)
        if endpoint and (parts.scheme not in ("http", "https") or not parts.netloc):
            raise ValueError(f"must be an http:// or https:// URL, or empty; got {endpoint!r}")
        return endpoint

    @field_validator("webhook_ports")
    @classmethod
    def _ports(cls, ports: str) -> str:
        if ports.strip() != "*":
            for port in ports.split(","):
                if port.strip() and not (port.strip().isdigit() and 0 < int(port) < 65536):
                    raise ValueError(f"must be ports 1-65535, comma-separated, or *; got {port!r}")
        return ports

    @model_validator(mode="after")
    def _cert_needs_key(self) -> "Settings":
        if (self.redis_tls_cert_file is None) != (self.redis_tls_key_file is None):
            raise ValueError("REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE go together")
        return self

    def redis_tls(self, url: str) -> dict[str, Any]:
        """Give the TLS options of a connection to `url`: none unless it is a rediss:// URL."""
        if urlsplit(url).scheme != "rediss":
            return {}
        return tls_options(
            self.redis_tls_ca_file, self.redis_tls_cert_file, self.redis_tls_key_file
        )

    @property
    def api_key_set(self) -> frozenset[str]:
        """The API keys the predict endpoints accept (empty: no key needed)."""
        return frozenset(
            k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip()
        )

    @property
    def webhook_port_set(self) -> frozenset[int] | None:
        """The ports a callback_url may name (None: any)."""
        if self.webhook_ports.strip() == "*":
            return None
        return frozenset(int(p) for p in self.webhook_ports.split(",") if p.strip())

    @property
    def broker_url(self) -> str:
        """Where tasks are queued."""
        return self.celery_broker_url or self.redis_url

    @property
    def result_backend(self) -> str:
        """Where task results are stored and published."""
        return self.celery_result_backend or self.redis_url


def tls_options(
    ca_file: Path | None, cert_file: Path | None, key_file: Path | None
) -> dict[str, Any]:
    """Say how to reach a Redis over TLS, verifying its certificate.

    The keys are redis-py's SSLConnection arguments, which kombu (broker_use_ssl) and Celery's
    result backend (redis_backend_use_ssl) hand on as they are.
    """
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    files = {"ssl_ca_certs": ca_file, "ssl_certfile": cert_file, "ssl_keyfile": key_file}
    options.update({name: str(path) for name, path in files.items() if path is not None})
    return options


# Variables that configure Celery itself (CELERY_BROKER_URL ...): a child started by a tool (bench,
# tests) must not inherit them, or it would reach another Redis than the one it is given.
CHILD_DROPPED_PREFIX = "CELERY_"
# prometheus_client reads this variable itself, in every process that writes or serves metrics:
# setting it in os.environ (boot/gunicorn_conf.py) is the only way to tell it where to write.
PROMETHEUS_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def inherited_environment(**overrides: str) -> dict[str, str]:
    """Give the environment of a child `tripq` supervises: all of this one's, plus `overrides`."""
    return {**os.environ, **overrides}


def child_environment(**overrides: str) -> dict[str, str]:
    """Give the environment of a child process a tool (bench, tests) starts: this one's, less
    CELERY_*, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(CHILD_DROPPED_PREFIX)}
    env.update(overrides)
    return env


def prometheus_multiproc_dir() -> str | None:
    """Say where this process's multiprocess metrics go (None: single-process metrics)."""
    return os.environ.get(PROMETHEUS_MULTIPROC_ENV) or None


def set_prometheus_multiproc_dir(path: str) -> None:
    """Tell prometheus_client, which reads only the environment, where to keep metrics files."""
    os.environ[PROMETHEUS_MULTIPROC_ENV] = path


def limit_openmp_threads() -> None:
    """Have OpenMP start one thread per inference call, unless the operator says otherwise.

    A worker already runs INFERENCE_THREADS native threads per process, and scikit-learn's tree
    ensembles would start one OpenMP thread per core inside each call, all spinning for the same
    cores as the API. libgomp reads OMP_NUM_THREADS once, from the environment, when it loads:
    so it must be set there, before scikit-learn is imported; a threadpoolctl limit holds only on
    the thread that sets it, never on the native threads inference runs on.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@lru_cache
def get_settings() -> Settings:
    """Return the process's settings, read once."""
    return Settings()
