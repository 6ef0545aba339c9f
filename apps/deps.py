"""Dependencies the routes declare: the settings and the process's job client."""

from typing import Annotated

from fastapi import Depends, Request

from config import Settings, get_settings
from core.jobs import JobClient


def get_jobs(request: Request) -> JobClient:
    """Return the job client the app's lifespan started."""
    jobs: JobClient = request.app.state.jobs
    return jobs


SettingsDep = Annotated[Settings, Depends(get_settings)]
JobsDep = Annotated[JobClient, Depends(get_jobs)]
