"""Liveness, readiness and metrics: never queued, never refused by load.

/health and /ready answer anyone who reaches the port, key or not, so by default they say only
whether this process is alive and ready. Versions and the fleet (worker hosts, model versions,
evaluators) tell an attacker what runs where: STATUS_DETAIL adds them, for operators' networks.
"""

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from apps.deps import PredictorDep, SettingsDep
from core.errors import BackendUnavailable
from core.infra import metrics
from core.online.schemas import HealthReply, ReadyReply, WorkerInfo

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthReply, response_model_exclude_unset=True)
async def health(request: Request, settings: SettingsDep) -> HealthReply:
    """Say that this API process is alive (with STATUS_DETAIL: which versions it serves)."""
    if not settings.status_detail:
        return HealthReply(name="tripq", alive=True)
    routing = request.app.state.predictor.routing
    return HealthReply(
        name="tripq",
        alive=True,
        api_version=request.app.version,
        model_version=routing.current or request.app.state.model_version,
        canary=routing.canary,
        canary_share=routing.canary_share,
    )


@router.get(
    "/ready",
    response_model=ReadyReply,
    response_model_exclude_unset=True,
    responses={
        503: {
            "model": ReadyReply,
            "description": "Not ready: see `redis` (and, with STATUS_DETAIL, `workers`).",
        }
    },
)
async def ready(response: Response, predictor: PredictorDep, settings: SettingsDep) -> ReadyReply:
    """Say whether Redis answers and a live worker holds a model (with STATUS_DETAIL: which
    workers hold which model versions)."""
    redis_ok = await predictor.ping()
    workers: list[WorkerInfo] = []
    if redis_ok:
        try:
            workers = await predictor.workers(settings.worker_ttl_s)
        except BackendUnavailable:
            redis_ok = False
    versions = sorted({v for w in workers for v in w.model_versions})
    is_ready = redis_ok and bool(versions) and predictor.available
    response.status_code = 200 if is_ready else 503
    if not settings.status_detail:
        return ReadyReply(ready=is_ready, redis=redis_ok)
    return ReadyReply(ready=is_ready, redis=redis_ok, workers=workers, model_versions=versions)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text."}},
)
async def read_metrics() -> Response:
    """Prometheus metrics of every API process behind this port (see core.infra.metrics)."""
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
