"""Dependencies the routes declare: the settings and the process's prediction client.

Both are `async def`: FastAPI runs a plain `def` dependency in its threadpool, a thread hop per
request that the hot path cannot afford.
"""

from typing import Annotated

from fastapi import Depends, Request

from config import Settings, get_settings
from core.online.client import PredictionClient


async def settings_dependency() -> Settings:
    """Return the process's settings (tests override this dependency)."""
    return get_settings()


async def get_predictor(request: Request) -> PredictionClient:
    """Return the prediction client the app's lifespan started."""
    predictor: PredictionClient = request.app.state.predictor
    return predictor


SettingsDep = Annotated[Settings, Depends(settings_dependency)]
PredictorDep = Annotated[PredictionClient, Depends(get_predictor)]
