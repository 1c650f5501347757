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
from labpage import dismiss_toasts

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


def server_state(page, hub, user: str, project: str) -> dict | None:
    """``user``'s session ``project`` as the REST API reports it, asked with the browser's own
    login (no extra token, no admin)."""
    r = page.request.get(f"{hub.url}/hub/api/users/{user}", fail_on_status_code=True)
    model = r.json()
    assert "servers" in model, f"the API shows no servers for {user}: {model}"
    return model["servers"].get(project)


def no_server(page, hub, user: str, project: str, timeout: float = 60) -> None:
    """Wait until the REST API no longer lists ``project`` among ``user``'s servers."""
    deadline = time.monotonic() + timeout
    while (state := server_state(page, hub, user, project)) is not None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{user}'s session {project} still there after {timeout} s: {state}")
        time.sleep(0.5)


def run_cell(page, index: int, code: str, expect_text: str):
    """Type ``code`` into cell ``index`` of the notebook in front, run it (Shift+Enter), wait for
    its output."""
    cell = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell").nth(index)
    editor = cell.locator(".cm-content")
    editor.click()
    page.keyboard.insert_text(code)  # no key events: CodeMirror adds no brackets or indents
    expect(editor).to_contain_text(code.splitlines()[0])
    page.keyboard.press("Shift+Enter")
    prompt = cell.locator(".jp-InputPrompt")
    try:  # executing shows "[*]" at once, then "[n]"
        expect(prompt).to_contain_text(re.compile(r"\[[\d*]+\]"), timeout=10_000)
    except AssertionError:
        # Lab dropped the request (seen when the kernel's websocket was still settling): the
        # cell never ran, so running it once more cannot run it twice.
        cell.locator(".jp-InputPrompt").click()
        page.keyboard.press("Control+Enter")
    output = cell.locator(".jp-OutputArea-output")
    expect(output).to_contain_text(expect_text, timeout=60_000)
    expect(cell.locator(".jp-InputPrompt")).to_contain_text(re.compile(r"\[\d+\]"))
    return output


def forget_lab_layout(hub, user: str = "alice", project: str = PROJECT) -> None:
    """Lab restores a home's last layout in its next session: the notebooks left open, and also
    tabs of files since renamed (after the journey below, a tab of "Untitled.ipynb", saved as
    lung-ct.ipynb). A test that then creates a notebook from the launcher races the restorer for
    "Untitled.ipynb": two widgets, two kernels for one notebook, "No Kernel" in the status bar."""
    shutil.rmtree(hub.state / "projects" / project / "homes" / user / ".jupyter" / "lab" / "workspaces",
                  ignore_errors=True)


@pytest.fixture
def stop_alice_session(sqlite_hub, browser_page):
    """Whatever happens in the test, leave no session of alice's running for the next tests, and
    start and leave her Lab with a fresh layout (the launcher, nothing restored)."""
    forget_lab_layout(sqlite_hub)
    yield
    page = browser_page
    for log in Path(sqlite_hub.env["VRE_RUN_DIR"]).glob("sessions/*alice*/server.log"):
        ARTIFACTS.mkdir(exist_ok=True)  # the session's own log, for when JupyterLab misbehaved
        shutil.copy(log, ARTIFACTS / f"browser-session-{log.parent.name}.log")
    if server_state(page, sqlite_hub, "alice", PROJECT) is not None:
        xsrf = next((c["value"] for c in page.context.cookies(sqlite_hub.url + "/hub/") if c["name"] == "_xsrf"), "")
        page.request.delete(f"{sqlite_hub.url}/hub/api/users/alice/servers/{PROJECT}",
                            headers={"X-XSRFToken": xsrf, "Referer": f"{sqlite_hub.url}/hub/home"})
        no_server(page, sqlite_hub, "alice", PROJECT)
    forget_lab_layout(sqlite_hub)


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
def test_start_session_run_code_in_lab_and_stop(sqlite_hub, browser_page, stop_alice_session):
    page = browser_page
    hub = sqlite_hub
    # the Lab asks its session only for what the access layer serves: nothing refused on a load
    refused, plugin_errors = [], []
    page.on("response", lambda r: refused.append(r.url) if "/user/" in r.url and r.status == 403 else None)
    page.on("console", lambda m: plugin_errors.append(m.text)
            if m.type == "error" and re.search(r"plugin|activat|dependenc", m.text, re.I) else None)
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
    with page.expect_navigation():
        form.locator('[type="submit"]').click()
    errors = page.locator(".spawn-error-msg")
    assert errors.count() == 0, f"the spawn form was refused: {errors.first.inner_text()}"

    # Spawn-pending page, then JupyterLab (or the pending page's failure message).
    spawn_failed = page.get_by_text(re.compile(r"Spawn failed"))
    expect(page.locator("#jp-main-dock-panel").or_(spawn_failed).first).to_be_visible(timeout=LAB_TIMEOUT_MS)
    assert spawn_failed.count() == 0, spawn_failed.first.inner_text()
    assert re.search(rf"/user/alice/{PROJECT}/lab", page.url), page.url
    notebook_tile = page.locator('.jp-Launcher .jp-LauncherCard[data-category="Notebook"]').first
    expect(notebook_tile).to_be_visible(timeout=LAB_TIMEOUT_MS)
    expect(notebook_tile).to_contain_text("Python 3")
    # Lab's root is the home directory, which holds the project's shared workspace.
    expect(page.locator('.jp-DirListing-item[title*="project"]').first).to_be_visible(timeout=30_000)

    notebook_tile.click()
    expect(page.locator(".jp-NotebookPanel")).to_be_visible(timeout=60_000)
    # The kernel is up and connected once the status bar says so (the toolbar's indicator
    # starts out "idle" before there is any kernel).
    expect(page.locator("#jp-main-statusbar")).to_contain_text(
        re.compile(r"Python 3 \(ipykernel\) \| Idle"), timeout=LAB_TIMEOUT_MS)

    listing = run_cell(page, 0, "import os\nprint(sorted(os.listdir('/data')))", DATASET)
    expect(listing).to_contain_text(f"['{DATASET}']")
    written = run_cell(page, 1,
                       f"try:\n    open('/data/{DATASET}/x', 'w')\nexcept OSError as e:\n    print(e)",
                       "Read-only file system")
    expect(written).to_contain_text(f"/data/{DATASET}/x")

    assert not refused, f"the Lab asked for routes the access layer refuses: {refused}"
    assert not plugin_errors, plugin_errors

    # Save it (the home is the user's own, and a saved tab shows no "unsaved" dot).
    page.keyboard.press("Escape")
    page.keyboard.press("Control+s")
    dialog = page.locator(".jp-Dialog")  # Lab asks for a name on the first save
    expect(dialog).to_contain_text("Rename file")
    dialog.locator("input.jp-Dialog-input, input[type=text]").first.fill("lung-ct.ipynb")
    dialog.get_by_role("button", name="Rename and Save").click()
    expect(dialog).to_have_count(0)
    expect(page.locator('#jp-main-dock-panel .lm-TabBar-tab[title*="lung-ct.ipynb"], '
                        '#jp-main-dock-panel .lm-TabBar-tab:has-text("lung-ct.ipynb")').first).to_be_visible()
    expect(page.locator("#jp-main-dock-panel .lm-TabBar-tab.jp-mod-dirty")).to_have_count(0, timeout=30_000)
    expect(page.locator('.jp-DirListing-item[title*="lung-ct.ipynb"]').first).to_be_visible()

    # The README screenshot: the notebook and both outputs, nothing over them.
    page.locator(".jp-Notebook .jp-Cell").first.scroll_into_view_if_needed()
    dismiss_toasts(page, wait_ms=15_000, click_ms=5_000)
    page.mouse.move(1390, 890)  # no hover highlight on the cells
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "lab.png"))
    (ROOT / "docs").mkdir(exist_ok=True)
    shutil.copy(ARTIFACTS / "lab.png", ROOT / "docs" / "screenshot-lab.png")

    # Stop it from the home page: the card flips back to "Start session".
    page.goto(f"{hub.url}/hub/home")
    card = page.locator(f"#project-{PROJECT}")
    expect(card.locator(".server-link")).to_be_visible()
    expect(card.locator(".server-link")).to_have_attribute("href", re.compile(rf"/user/alice/{PROJECT}/?$"))
    expect(card.locator(".start-server")).to_be_hidden()
    assert (server_state(page, hub, "alice", PROJECT) or {}).get("ready"), "the API should list the session"
    page.wait_for_function("window._jupyterhub_page_loaded === true")
    card.locator(".stop-server").click()
    expect(card.locator(".start-server")).to_be_visible(timeout=60_000)
    expect(card.locator(".stop-server")).to_be_hidden()
    no_server(page, hub, "alice", PROJECT)
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
    # The refusal must say why, naming the project (not some other error on the way).
    submit = page.locator('#spawn_form [type="submit"]')
    if submit.count():
        with page.expect_navigation():
            submit.click()
        expect(page.locator(".spawn-error-msg, .alert-danger").first).to_contain_text(
            re.compile(r"not a member of a project named ['\"]prostate-ai['\"]"))
        assert "/user/alice/prostate-ai" not in page.url
        assert "spawn-pending" not in page.url
    no_server(page, hub, "alice", "prostate-ai", timeout=5)
    assert not re.search(r"Starting sandbox \S*alice\S*prostate-ai", hub.log_tail(400))
