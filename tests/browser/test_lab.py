"""A researcher's day in real Chromium: log in, see only their projects, start a session from the
home page, run code in JupyterLab against the read-only datasets, stop the session again.

Runs against the SQLite hub (the subject here is the pages, not the database). Also produces the
README's screenshot, docs/screenshot-lab.png.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
from hubclient import HubClient

pytestmark = [pytest.mark.integration, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
PROJECT = "lung-screening"
DATASET = "lung-ct-screening"
LAB_TIMEOUT_MS = 90_000

expect = pytest.importorskip("playwright.sync_api").expect


# --- helpers -------------------------------------------------------------------------------
def login(page, hub, user: str, password: str | None = None) -> None:
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", user)
    page.fill("#password_input", password if password is not None else hub.passwords[user])
    page.click("#login_submit")


def login_ok(page, hub, user: str) -> None:
    """Log ``user`` in by posting the login form over HTTP and hand the cookies to the browser.

    The login page itself is test 1's subject; the other tests should not all fail with it.
    """
    client = HubClient(hub.url, user)
    client.login(hub.passwords[user])
    assert client.logged_in(), f"login as {user} failed"
    page.context.add_cookies([
        {"name": c.name, "value": c.value, "url": f"{hub.url}{c.path or '/'}"} for c in client.http.cookies
    ])
    page.goto(f"{hub.url}/hub/home")
    expect(page.locator("h1")).to_contain_text("Your research projects")


def no_server(hub, user: str, project: str, timeout: float = 60) -> None:
    """Wait until the REST API no longer lists ``project`` among ``user``'s servers."""
    client = hub.client(user)
    deadline = time.monotonic() + timeout
    while (state := client.server_state(project)) is not None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{user}'s session {project} still there after {timeout} s: {state}")
        time.sleep(0.5)


def run_cell(page, code: str, expect_text: str):
    """Type ``code`` into the active notebook cell, run it (Shift+Enter), wait for its output."""
    cell = page.locator(".jp-Notebook .jp-Cell.jp-mod-active")
    editor = cell.locator(".cm-content")
    editor.click()
    page.keyboard.insert_text(code)  # no key events: CodeMirror adds no brackets or indents
    expect(editor).to_contain_text(code.splitlines()[0])
    page.keyboard.press("Shift+Enter")
    output = cell.locator(".jp-OutputArea-output")
    expect(output).to_contain_text(expect_text, timeout=60_000)
    expect(cell.locator(".jp-InputPrompt")).to_contain_text(re.compile(r"\[\d+\]"))
    return output


def dismiss_toasts(page) -> None:
    """Answer Lab's "get Jupyter news?" toast (and close any other), for a clean screenshot."""
    for button in page.locator(".jp-Notification-Toast-Button, .Toastify__close-button").all():
        try:
            if button.is_visible():
                label = (button.text_content() or "").strip()
                if label in ("No", "") or "close" in (button.get_attribute("aria-label") or "").lower():
                    button.click(timeout=5_000)
        except Exception:  # a toast that closes itself meanwhile is fine
            pass
    expect(page.locator(".Toastify__toast")).to_have_count(0, timeout=15_000)


# --- 1. login --------------------------------------------------------------------------------
def test_login_wrong_password_then_right_one(sqlite_hub, browser_page):
    page = browser_page
    login(page, sqlite_hub, "bob", "not-" + sqlite_hub.passwords["bob"])
    error = page.locator(".login_error")
    expect(error).to_be_visible()
    expect(error).to_contain_text(re.compile(r"invalid|incorrect|wrong|failed", re.I))
    assert re.search(r"/hub/login", page.url), page.url
    expect(page.locator("#login_submit")).to_be_visible()
    assert not any(c["name"].startswith("jupyterhub-session") or c["name"] == "jupyterhub-hub-login"
                   for c in page.context.cookies()), "a failed login must not leave a session cookie"

    login(page, sqlite_hub, "bob")
    page.wait_for_url(re.compile(r"/hub/home/?$"))
    expect(page.locator("h1")).to_contain_text("Your research projects")
    expect(page.locator("#project-prostate-ai")).to_be_visible()
    expect(page.locator(".login_error")).to_have_count(0)


# --- 2. home page ----------------------------------------------------------------------------
def test_home_shows_only_own_projects_with_catalogue_details(sqlite_hub, browser_page):
    page = browser_page
    login_ok(page, sqlite_hub, "alice")
    card = page.locator(f"#project-{PROJECT}")
    expect(card).to_be_visible()
    expect(card.locator(".vre-datasets")).to_contain_text("Lung cancer screening")
    expect(card.locator(".vre-datasets")).to_contain_text(f"/data/{DATASET}")
    profiles = card.locator(".vre-profiles li b")
    expect(profiles).to_have_text(["small", "large"])
    start = card.locator(".start-server")
    expect(start).to_be_visible()
    expect(start).to_have_attribute("href", re.compile(rf"/hub/spawn/alice/{PROJECT}$"))
    expect(card.locator(".stop-server")).to_be_hidden()
    expect(card.locator(".server-link")).to_be_hidden()

    expect(page.locator("#project-prostate-ai")).to_have_count(0)
    assert "prostate" not in page.locator("main, body").first.inner_text().lower()
    expect(page.locator(".vre-project")).to_have_count(1)


# --- 3. the whole journey --------------------------------------------------------------------
def test_start_session_run_code_in_lab_and_stop(sqlite_hub, browser_page):
    page = browser_page
    hub = sqlite_hub
    login_ok(page, hub, "alice")
    card = page.locator(f"#project-{PROJECT}")
    card.locator(".start-server").click()

    # The spawn form: the project's profiles as radio buttons, the first one preselected.
    page.wait_for_url(re.compile(rf"/hub/spawn/alice/{PROJECT}$"))
    form = page.locator("#spawn_form")
    expect(form).to_contain_text("Lung cancer screening")
    radios = form.locator('input[type=radio][name="profile"]')
    expect(radios).to_have_count(2)
    form.locator('input[name="profile"][value="small"]').check()
    expect(form.locator('input[name="profile"][value="small"]')).to_be_checked()
    form.locator('[type="submit"]').click()

    # Spawn-pending page, then JupyterLab.
    page.wait_for_url(re.compile(rf"/user/alice/{PROJECT}/lab"), timeout=LAB_TIMEOUT_MS)
    expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=LAB_TIMEOUT_MS)
    notebook_tile = page.locator('.jp-Launcher .jp-LauncherCard[data-category="Notebook"]').first
    expect(notebook_tile).to_be_visible(timeout=LAB_TIMEOUT_MS)
    expect(notebook_tile).to_contain_text("Python 3")
    # Lab's root is the home directory, which holds the project's shared workspace.
    expect(page.locator('.jp-DirListing-item[title*="project"]').first).to_be_visible(timeout=30_000)

    notebook_tile.click()
    expect(page.locator(".jp-NotebookPanel")).to_be_visible(timeout=60_000)
    expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_be_attached(
        timeout=LAB_TIMEOUT_MS)

    listing = run_cell(page, "import os\nprint(sorted(os.listdir('/data')))", DATASET)
    expect(listing).to_contain_text(f"['{DATASET}']")
    written = run_cell(page,
                       f"try:\n    open('/data/{DATASET}/x', 'w')\nexcept OSError as e:\n    print(e)",
                       "Read-only file system")
    expect(written).to_contain_text(f"/data/{DATASET}/x")

    # The README screenshot: the notebook and both outputs, nothing over them.
    page.locator(".jp-Notebook .jp-Cell").first.scroll_into_view_if_needed()
    dismiss_toasts(page)
    page.mouse.move(1390, 890)  # no hover highlight on the cells
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "lab.png"))
    (ROOT / "docs").mkdir(exist_ok=True)
    shutil.copy(ARTIFACTS / "lab.png", ROOT / "docs" / "screenshot-lab.png")

    # Stop it from the home page: the card flips back to "Start session".
    page.goto(f"{hub.url}/hub/home")
    card = page.locator(f"#project-{PROJECT}")
    expect(card.locator(".server-link")).to_be_visible()
    expect(card.locator(".start-server")).to_be_hidden()
    page.wait_for_function("window._jupyterhub_page_loaded === true")
    card.locator(".stop-server").click()
    expect(card.locator(".start-server")).to_be_visible(timeout=60_000)
    expect(card.locator(".stop-server")).to_be_hidden()
    no_server(hub, "alice", PROJECT)
    page.reload()
    expect(page.locator(f"#project-{PROJECT} .start-server")).to_be_visible()


# --- 4. refusal ------------------------------------------------------------------------------
def test_spawn_page_refuses_a_project_the_user_is_not_in(sqlite_hub, browser_page):
    page = browser_page
    hub = sqlite_hub
    login_ok(page, hub, "alice")
    page.goto(f"{hub.url}/hub/spawn/alice/prostate-ai")
    expect(page.locator("body")).to_contain_text("you are not a member")
    expect(page.locator("body")).to_contain_text('"prostate-ai"')
    expect(page.locator('input[name="profile"]')).to_have_count(0)
    assert "/user/alice/prostate-ai" not in page.url

    # Submitting the form anyway (it has JupyterHub's Start button) must not start anything.
    submit = page.locator('#spawn_form [type="submit"]')
    if submit.count():
        submit.click()
        page.wait_for_load_state()
        expect(page.locator("body")).to_contain_text(re.compile(r"not a member", re.I))
        assert "/user/alice/prostate-ai" not in page.url
    no_server(hub, "alice", "prostate-ai", timeout=5)
    for log_line in hub.log_tail(200).splitlines():
        assert not ("alice" in log_line and "prostate-ai" in log_line and "Starting sandbox" in log_line), log_line
