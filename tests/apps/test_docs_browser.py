"""/docs and /redoc in a real browser that has no route to the internet.

    switch ──── this process: Redis, a worker, and the API listening on the switch's address
      └──────── host "browser" (tests.hosts.network): Debian's Chromium, headless, driven by
                Playwright over a pipe; its only route is the switch's subnet

Every request a page makes is recorded, and each must go to the API and succeed. Screenshots of
the pages are kept in the module's log folder and in repo/logs/tests/docs-browser/.
"""

import json
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, Request, Response, expect, sync_playwright

from apps.docs_assets import STATIC_DIR
from apps.docs_assets.refresh import recorded_digests, sha256_of
from tests.hosts.network import Host, Network, prerequisite
from tests.support import REPO, start_api_processes, start_worker, tripq_env

SCREENSHOTS = REPO / "repo" / "logs" / "tests" / "docs-browser"
PAGE_TIMEOUT_MS = 30_000
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# Addresses `ip route get` asks about: any public one, IPv4 and IPv6.
PUBLIC_ADDRESSES = ("1.1.1.1", "2606:4700:4700::1111")
# ReDoc 2's sidebar logo, on its maker's CDN: the page's policy keeps the browser from fetching it.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def browser_prerequisite() -> str | None:
    """Say why the offline browser cannot run here (None: it can)."""
    if shutil.which("chromium") is None:
        return (
            "the docs browser test needs Debian's Chromium (apt-get install chromium; .ci/run does)"
        )
    return prerequisite()


class Visit:
    """A page of a fresh browser context, and every request it made, failed or answered."""

    def __init__(self, browser: Browser) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page: Page = self.context.new_page()
        self.page.set_default_timeout(PAGE_TIMEOUT_MS)
        self.requested: list[str] = []
        self.blocked: list[str] = []  # refused by the page's Content-Security-Policy: never sent
        self.failed: list[str] = []
        self.refused: list[str] = []
        self.page.on("request", lambda r: self.requested.append(r.url))
        self.page.on("requestfailed", self._failed)
        self.page.on("response", self._answered)

    def _failed(self, request: Request) -> None:
        if request.failure == "csp":  # how Playwright reports net::ERR_BLOCKED_BY_CSP
            self.blocked.append(request.url)
        else:
            self.failed.append(f"{request.method} {request.url}: {request.failure}")

    def _answered(self, response: Response) -> None:
        if response.status >= 400:
            self.refused.append(f"{response.request.method} {response.url}: {response.status}")

    def assert_all_served_by(self, base: str, blocked: Sequence[str] = ()) -> None:
        """Check that every request sent went to `base`'s host and port and got a good answer,
        and that the browser held back exactly the requests `blocked`."""
        origin = urlsplit(base)[:2]
        sent = [url for url in self.requested if url not in self.blocked]
        # A blob: URL names memory of the page, at the page's origin: nothing goes out.
        elsewhere = [url for url in sent if urlsplit(url.removeprefix("blob:"))[:2] != origin]
        assert sent
        assert elsewhere == []
        assert self.failed == []
        assert self.refused == []
        assert self.blocked == list(blocked)

    def screenshot(self, name: str, log_dir: Path) -> None:
        """Keep what the page shows now as `name`.png in `log_dir` and in SCREENSHOTS."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for folder in (log_dir, SCREENSHOTS):
            path = folder / f"{name}.png"
            self.page.screenshot(path=path)
            print(f"screenshot: {path}")

    def close(self) -> None:
        """Close the page and its context."""
        self.context.close()


@pytest.fixture(scope="module")
def offline_host() -> Iterator[tuple[Network, Host]]:
    """A test host whose only route is to this machine over the switch (skip where none can be
    made, saying why)."""
    reason = browser_prerequisite()
    if reason:
        pytest.skip(reason)
    network = Network()
    try:
        host = network.add_host("browser")
        for address in PUBLIC_ADDRESSES:
            route = subprocess.run(
                ["ip", "-n", host.namespace, "route", "get", address],
                capture_output=True,
                text=True,
            )
            assert route.returncode != 0, f"the browser's host has a route out: {route.stdout}"
        yield network, host
    finally:
        network.close()


@pytest.fixture(scope="module")
def api(offline_host: tuple[Network, Host], redis_url: str, log_dir: Path) -> Iterator[str]:
    """Run a worker and the API, listening on this machine's switch address; yield its URL."""
    network, _ = offline_host
    env = tripq_env(redis_url, log_dir)
    worker = start_worker(env, log_dir)
    try:
        service, base = start_api_processes(env, log_dir, 1, host=network.client_address)
        try:
            yield base
        finally:
            service.stop()
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def browser(
    offline_host: tuple[Network, Host], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Browser]:
    """Headless Chromium on the offline host (Playwright runs it through a launcher script)."""
    _, host = offline_host
    launcher = tmp_path_factory.mktemp("chromium") / "chromium-offline"
    chromium = host.wrap([str(shutil.which("chromium"))])
    launcher.write_text(f'#!/bin/sh\nexec {shlex.join(chromium)} "$@"\n')
    launcher.chmod(0o755)
    with sync_playwright() as playwright:
        # Never a browser of Playwright's own: it would have to be downloaded.
        launched = playwright.chromium.launch(executable_path=launcher, timeout=PAGE_TIMEOUT_MS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def visit(browser: Browser) -> Iterator[Visit]:
    """A fresh page in the offline browser, recording its requests."""
    opened = Visit(browser)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(scope="module")
def spec(api: str) -> dict[str, Any]:
    """The API's OpenAPI document."""
    document: dict[str, Any] = httpx.get(f"{api}/openapi.json", timeout=5).json()
    return document


def test_vendored_docs_assets_match_the_sha256_recorded_beside_them() -> None:
    served = {
        str(path.relative_to(STATIC_DIR)): sha256_of(path)
        for path in STATIC_DIR.rglob("*")
        if path.is_file()
    }

    assert served == recorded_digests()


def test_swagger_ui_offline_lists_every_endpoint_and_tries_out_predict(
    api: str, spec: dict[str, Any], visit: Visit, log_dir: Path
) -> None:
    page = visit.page
    page.goto(f"{api}/docs")
    page.locator(".opblock").first.wait_for()
    listed = page.eval_on_selector_all(
        ".opblock",
        """blocks => blocks.map(b => [
            b.querySelector('.opblock-summary-method').textContent.toLowerCase(),
            b.querySelector('.opblock-summary-path').dataset.path,
        ])""",
    )
    documented = {
        (method, path)
        for path, operations in spec["paths"].items()
        for method in operations
        if method in HTTP_METHODS
    }
    assert {tuple(pair) for pair in listed} == documented
    assert len(listed) == len(documented)
    visit.screenshot("docs", log_dir)

    predict = page.locator(
        ".opblock-post", has=page.locator('[data-path="/v1/trip/predict"]')
    ).first
    predict.locator(".opblock-summary").click()
    predict.locator("button.try-out__btn").click()
    predict.locator("button.execute").click()
    live = predict.locator(".live-responses-table tr.response")
    expect(live.locator(".response-col_status")).to_have_text("200", timeout=PAGE_TIMEOUT_MS)
    body = live.locator(".response-col_description .highlight-code pre")
    reply = json.loads(body.inner_text())
    body.scroll_into_view_if_needed()
    visit.screenshot("docs-try-it-out", log_dir)

    assert reply["reply_code"] == 0
    assert reply["duration"] > 0
    visit.assert_all_served_by(api)


def test_redoc_offline_renders_the_trip_request_and_reply_schemas(
    api: str, spec: dict[str, Any], visit: Visit, log_dir: Path
) -> None:
    predict = spec["paths"]["/v1/trip/predict"]["post"]
    schemas = spec["components"]["schemas"]
    page = visit.page
    page.goto(f"{api}/redoc")
    operation = page.locator(f"[id='operation/{predict['operationId']}']")
    expect(operation.get_by_text("Request Body schema")).to_be_visible()
    operation.locator("button", has_text="200").first.click()
    expect(operation.get_by_text("Response Schema")).to_be_visible()
    operation.scroll_into_view_if_needed()
    shown = operation.inner_text()
    visit.screenshot("redoc", log_dir)

    for model in ("TripRequest", "TripReply"):
        for name, field in schemas[model]["properties"].items():
            assert name in shown, f"{model}.{name} is not shown"
            assert field.get("description", "") in shown, f"{model}.{name}'s description"
    visit.assert_all_served_by(api, blocked=[REDOC_LOGO])
