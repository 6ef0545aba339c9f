"""/docs (Swagger UI) and /redoc (ReDoc), served with every asset from tripq itself.

FastAPI's own pages load their JavaScript, CSS and favicon from public CDNs (and ReDoc its
fonts from Google), so on a network without internet they are blank. These pages load the
copies pinned under static/ (versions, sources, sha256 and licences in README.md beside this
file; `python -m apps.docs_assets.refresh` replaces them), and their Content-Security-Policy
lets the browser fetch nothing from any other host: ReDoc's bundle still points its sidebar
logo at its maker's CDN, and the policy makes the browser skip that image.
"""

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
ASSETS_PATH = "/docs/assets"
DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"
SWAGGER_UI_JS = f"{ASSETS_PATH}/swagger-ui/swagger-ui-bundle.js"
SWAGGER_UI_CSS = f"{ASSETS_PATH}/swagger-ui/swagger-ui.css"
REDOC_JS = f"{ASSETS_PATH}/redoc/redoc.standalone.js"
# The tab icon of both pages: Swagger UI's, the one image vendored.
FAVICON = f"{ASSETS_PATH}/swagger-ui/favicon-32x32.png"

# Same origin only; inline scripts and styles because both pages start from an inline script
# and style their components inline, and blob: workers for ReDoc's search.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "worker-src 'self' blob:",
    ]
)


def install_docs(app: FastAPI) -> None:
    """Serve /docs, /redoc and their assets from the app; build it with docs_url=redoc_url=None."""
    openapi_url = app.openapi_url
    if openapi_url is None:
        raise ValueError("openapi_url: the docs pages need the app to publish its OpenAPI schema")
    app.mount(ASSETS_PATH, StaticFiles(directory=STATIC_DIR), name="docs_assets")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        """Show the API in Swagger UI, with "Try it out"."""
        root = _root_path(request)
        page = get_swagger_ui_html(
            title=f"{app.title} - Swagger UI",
            openapi_url=root + openapi_url,
            swagger_js_url=root + SWAGGER_UI_JS,
            swagger_css_url=root + SWAGGER_UI_CSS,
            swagger_favicon_url=root + FAVICON,
            oauth2_redirect_url=root + OAUTH2_REDIRECT_PATH,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )
        return _confined(page)

    @app.get(OAUTH2_REDIRECT_PATH, include_in_schema=False)
    async def swagger_ui_oauth2_redirect() -> HTMLResponse:
        """Hand an OAuth2 authorization back to the Swagger UI page that asked for it."""
        return _confined(get_swagger_ui_oauth2_redirect_html())

    @app.get(REDOC_PATH, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        """Show the API's reference in ReDoc."""
        root = _root_path(request)
        return _confined(
            get_redoc_html(
                title=f"{app.title} - ReDoc",
                openapi_url=root + openapi_url,
                redoc_js_url=root + REDOC_JS,
                redoc_favicon_url=root + FAVICON,
                with_google_fonts=False,
            )
        )


def _root_path(request: Request) -> str:
    """The prefix a proxy serves the app under (ASGI root_path), so the pages' links resolve."""
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


def _confined(page: HTMLResponse) -> HTMLResponse:
    """Forbid the browser every request to another host while it shows `page`."""
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page
