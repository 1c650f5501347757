"""Real Chromium (Debian's, never a downloaded one) driving a real hub.

One browser per test module, a fresh context (no cookies, no storage) per test. When a test
fails, a screenshot of its page is saved to test-artifacts/ for the CI run to keep.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
VIEWPORT = {"width": 1400, "height": 900}


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Expose each phase's report on the test item, so fixtures can tell whether the test failed."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() or not shutil.which(CHROMIUM):
        pytest.skip(f"Chromium not installed at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    sync_api.expect.set_options(timeout=30_000)  # expect() waits 5 s by default: too short on 2 cores
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


# Only the hub on this machine is browsed: a request for any other http(s) host is refused.
NOT_LOCAL = re.compile(r"^(?:https?|wss?)://(?!(?:127\.0\.0\.1|localhost)(?::\d+)?(?:/|$))")


@pytest.fixture
def browser_page(browser, request):
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    context.set_default_timeout(30_000)
    context.set_default_navigation_timeout(60_000)
    context.route(NOT_LOCAL, lambda route: route.abort())
    page = context.new_page()
    try:
        yield page
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            ARTIFACTS.mkdir(exist_ok=True)
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid.split("::", 1)[-1])
            try:
                page.screenshot(path=str(ARTIFACTS / f"browser-failure-{name}.png"), full_page=True, timeout=15_000)
            except Exception as e:  # a crashed page must not hide the test's own failure
                print(f"could not save failure screenshot: {e}")
        context.close()


@pytest.fixture
def logged_in(browser):
    """``logged_in(hub, user, path)``: a page of a fresh context (only this machine browsed), logged
    in through the hub's login form and landed on ``path``; its context is closed after the test."""
    contexts = []

    def open_as(hub, user: str, path: str):
        context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
        contexts.append(context)
        context.set_default_timeout(30_000)
        context.route(NOT_LOCAL, lambda route: route.abort())
        page = context.new_page()
        page.goto(f"{hub.url}/hub/login?next={path}")
        page.fill("#username_input", user)
        page.fill("#password_input", hub.passwords[user])
        page.click("#login_submit")
        page.wait_for_url(re.compile(re.escape(path)))
        return page

    yield open_as
    for context in contexts:
        context.close()
