"""What the API says about itself and its fleet: `/health`, `/ready` and each live worker."""

from pydantic import BaseModel, ConfigDict, Field


class HealthReply(BaseModel):
    """Liveness of one API process; versions only where STATUS_DETAIL allows them."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"name": "tripq", "alive": True},
                {
                    "name": "tripq",
                    "alive": True,
                    "api_version": "0.1.0",
                    "model_version": "gbm-2021-01-v2",
                    "canary": None,
                    "canary_share": 0.0,
                },
            ]
        }
    )

    name: str
    alive: bool = Field(description="Always true: a process that answers is alive.")
    api_version: str | None = Field(
        default=None, description="The API's software version (STATUS_DETAIL only)."
    )
    model_version: str | None = Field(
        default=None,
        description="The current version: it answers requests that pin none (`tripq models`; "
        "STATUS_DETAIL only).",
    )
    canary: str | None = Field(
        default=None, description="A candidate version on trial, if any (STATUS_DETAIL only)."
    )
    canary_share: float | None = Field(
        default=None, description="Share of unpinned requests it answers (STATUS_DETAIL only)."
    )


class WorkerInfo(BaseModel):
    """One live worker process, as its last heartbeat described it."""

    name: str
    model_version: str | None = Field(
        description="Its current version, which answers unpinned requests; None while loading."
    )
    model_versions: list[str] = Field(
        default_factory=list, description="Every version it holds (current, canary, previous)."
    )
    evaluators: dict[str, str] = Field(
        default_factory=dict,
        description="What computes each version's answers: `compiled` trees, `scikit-learn` "
        "trees (a worker that could not compile them), or `linear` (a baseline).",
    )
    devices: dict[str, str] = Field(
        default_factory=dict,
        description="Where each version's large calls run: `cpu`, or the GPU (e.g. `cuda:0`) "
        "that answers calls of ACCELERATOR_MIN_BATCH trips or more.",
    )
    concurrency: int
    seen_s_ago: float


class ReadyReply(BaseModel):
    """Whether this API process can answer predictions now; the fleet only where STATUS_DETAIL
    allows it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"ready": True, "redis": True},
                {
                    "ready": True,
                    "redis": True,
                    "workers": [
                        {
                            "name": "trip1@worker-7f9c",
                            "model_version": "gbm-2021-01-t",
                            "model_versions": ["gbm-2021-01-t"],
                            "evaluators": {"gbm-2021-01-t": "compiled"},
                            "devices": {"gbm-2021-01-t": "cuda:0"},
                            "concurrency": 32,
                            "seen_s_ago": 0.8,
                        }
                    ],
                    "model_versions": ["gbm-2021-01-v2"],
                },
            ]
        }
    )

    ready: bool = Field(description="Redis answers and at least one worker holds a model.")
    redis: bool
    workers: list[WorkerInfo] | None = Field(
        default=None, description="The live workers (STATUS_DETAIL only)."
    )
    model_versions: list[str] | None = Field(
        default=None,
        description="Distinct model versions the live workers hold (STATUS_DETAIL only).",
    )
