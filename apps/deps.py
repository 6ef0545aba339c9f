"""Dependencies the routes declare: the settings and the process's job client.

Both are `async def`: FastAPI runs a plain `def` dependency in its threadpool, a thread hop per
request that the hot path cannot afford.
"""

from typing import Annotated

from fastapi import Depends, Request

from config import Settings, get_settings
from core.online.client import JobClient


async def settings_dependency() -> Settings:
    """Return the process's settings (tests override this dependency)."""
    return get_settings()


async def get_jobs(request: Request) -> JobClient:
    """Return the job client the app's lifespan started."""
    jobs: JobClient = request.app.state.jobs
    return jobs


SettingsDep = Annotated[Settings, Depends(settings_dependency)]
JobsDep = Annotated[JobClient, Depends(get_jobs)]
