"""The gunicorn worker class of the API: uvicorn with uvloop and httptools, lifespan on."""

from uvicorn_worker import UvicornWorker

from config import get_settings


class TripqUvicornWorker(UvicornWorker):  # type: ignore[misc]
    """A UvicornWorker whose access log follows API_ACCESS_LOG (tripq logs requests itself)."""

    CONFIG_KWARGS = {  # noqa: RUF012 - the base class reads this class attribute
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "access_log": get_settings().api_access_log,
        # Replies name no server software (nor its version).
        "server_header": False,
    }
