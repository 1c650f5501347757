"""The Lab's Jobs panel in real Chromium, against the real batch queue of the SQLite hub.

alice's lung-screening session: a tiny notebook is written into the workspace, submitted from the
panel's form, run by the queue (papermill in a sandboxed worker), and followed in the panel until
it succeeded, with its log ("panel ok") and outputs; a missing path gets the hub's refusal inline.
The extension must be built and installed first: ``bash extensions/build-labextension.sh``.
Screenshot: docs/screenshot-jobs.png.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from hubclient import HubClient
from labpage import dismiss_toasts

pytestmark = [pytest.mark.integration, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
PROJECT = "lung-screening"
LAB_TIMEOUT_MS = 90_000
JOB_TIMEOUT_MS = 90_000
NOTEBOOK = "project/panel-test.ipynb"

expect = pytest.importorskip("playwright.sync_api").expect


@pytest.fixture(scope="module")
def alice(sqlite_hub):
    """alice's API client (token); her session is stopped when the module is done."""
    client = sqlite_hub.client("alice")
    yield client
    for log in Path(sqlite_hub.env["VRE_RUN_DIR"]).glob("sessions/*alice*/server.log"):
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(log, ARTIFACTS / f"jobs-panel-session-{log.parent.name}.log")
    if client.server_state(PROJECT) is not None:
        client.stop(PROJECT)
    # Lab restores its last layout (here: the executed notebook) in the next session of this home;
    # the browser tests after this one expect the launcher
    home = sqlite_hub.state / "projects" / PROJECT / "homes" / "alice"
    shutil.rmtree(home / ".jupyter" / "lab" / "workspaces", ignore_errors=True)


@pytest.fixture
def lab(sqlite_hub, alice, browser_page):
    """A page logged in as alice, in her running lung-screening session's Lab (fresh layout)."""
    if alice.server_state(PROJECT) is None:
        alice.start(PROJECT, "small")
    page = browser_page
    client = HubClient(sqlite_hub.url, "alice")
    client.login(sqlite_hub.passwords["alice"])
    assert client.logged_in(), "login as alice failed"
    page.context.add_cookies([
        {"name": c.name, "value": c.value, "url": f"{sqlite_hub.url}{c.path or '/'}"} for c in client.http.cookies])
    console: list[str] = []  # the page's errors, for a failure message that says what broke
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: console.append(str(e)))
    page.goto(f"{alice.server_url(PROJECT)}/lab?reset")
    expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=LAB_TIMEOUT_MS)
    try:
        expect(page.locator('.jp-SideBar [data-id="vre-jobs"]').first).to_be_visible(timeout=LAB_TIMEOUT_MS)
    except AssertionError as e:
        raise AssertionError(f"no Jobs tab in the sidebar; page errors: {console[-10:]}") from e
    return page


def write_notebook(alice, path: str, code: str) -> None:
    nb = {"nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "cells": [{"cell_type": "code", "id": "c1", "metadata": {}, "execution_count": None, "outputs": [],
                     "source": code}]}
    r = alice.server_api(PROJECT, "PUT", f"/contents/{path}", json={"type": "notebook", "format": "json", "content": nb})
    assert r.status_code in (200, 201), f"writing {path}: {r.status_code} {r.text}"


def test_submit_follow_and_refuse_from_the_jobs_panel(lab, alice):
    page = lab
    write_notebook(alice, NOTEBOOK, 'print("panel ok")')

    # The panel: its sidebar tab, and the palette command.
    page.locator('.jp-SideBar [data-id="vre-jobs"]').first.click()
    panel = page.locator(".vre-Jobs")
    expect(panel).to_be_visible()

    # Submit the notebook from the form (paths as the file browser shows them).
    toggle = panel.get_by_role("button", name="Submit a notebook or script as a batch job")
    toggle.click()
    form = panel.locator("form.vre-JobForm")
    expect(form).to_be_visible()
    form.get_by_label("Notebook or script").fill(NOTEBOOK)
    expect(form.get_by_label("Kind", exact=True)).to_have_value("notebook")
    form.get_by_label("Parameters (JSON object)").fill("{}")
    form.get_by_label("Name", exact=True).fill("panel-test")
    with page.expect_response(lambda r: r.request.method == "POST" and "/vre/api/jobs" in r.url) as answer:
        form.get_by_role("button", name="Submit job").click()
    assert answer.value.status == 201, answer.value.text()
    job = answer.value.json()
    assert job["target"] == f"/home/jovyan/{NOTEBOOK}" and job["kind"] == "notebook", job
    expect(form).to_be_hidden()

    # The list shows it, then (the real queue runs it) as succeeded.
    row = panel.locator(f'.vre-JobRow[data-job-id="{job["id"]}"]')
    expect(row).to_contain_text("panel-test")
    expect(row).to_contain_text(f"#{job['id']}")
    expect(row).to_contain_text("alice")
    expect(row.locator(".vre-JobBadge")).to_have_attribute("data-state", "succeeded", timeout=JOB_TIMEOUT_MS)
    expect(row).to_contain_text(re.compile(r"\d+ s"))  # its duration

    # Its details (selected on submit; select it again by keyboard): the log and the outputs.
    row.focus()
    page.keyboard.press("Enter")
    expect(row).to_have_attribute("aria-selected", "true")
    details = panel.locator(".vre-JobDetails")
    expect(details).to_be_visible()
    expect(details.locator(".vre-JobDetails-title")).to_contain_text("succeeded")
    expect(details.locator("pre.vre-JobLog")).to_contain_text("panel ok", timeout=30_000)
    output = details.locator(".vre-JobOutput", has_text="panel-test.ipynb")
    expect(output).to_be_visible()
    expect(output).to_have_attribute("data-path", f"project/jobs/{job['id']}/panel-test.ipynb")
    expect(details.get_by_role("button", name=f"Cancel job {job['id']}")).to_be_disabled()
    expect(details.get_by_role("button", name=f"Queue job {job['id']} again as a new job")).to_be_enabled()

    dismiss_toasts(page, wait_ms=5_000)
    page.mouse.move(1390, 890)
    ARTIFACTS.mkdir(exist_ok=True)
    panel.screenshot(path=str(ARTIFACTS / "jobs-panel.png"))
    page.screenshot(path=str(ARTIFACTS / "jobs.png"), clip={"x": 0, "y": 0, "width": 760, "height": 900})
    (ROOT / "docs").mkdir(exist_ok=True)
    shutil.copy(ARTIFACTS / "jobs.png", ROOT / "docs" / "screenshot-jobs.png")

    # The executed notebook opens in Lab.
    output.click()
    expect(page.locator('#jp-main-dock-panel .lm-TabBar-tab:has-text("panel-test.ipynb")').first).to_be_visible()
    expect(page.locator(".jp-NotebookPanel .jp-OutputArea-output").first).to_contain_text("panel ok")

    # A missing path: the hub's message, inline in the form.
    toggle.click()
    expect(form).to_be_visible()
    form.get_by_label("Notebook or script").fill("project/no-such-notebook.ipynb")
    form.get_by_label("Name", exact=True).fill("")
    form.get_by_role("button", name="Submit job").click()
    error = form.locator(".vre-JobForm-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("does not exist in the project workspace")
    expect(error).to_contain_text("no-such-notebook.ipynb")
    # Bad JSON parameters are caught before anything is sent.
    form.get_by_label("Notebook or script").fill(NOTEBOOK)
    form.get_by_label("Parameters (JSON object)").fill("{nope")
    form.get_by_role("button", name="Submit job").click()
    expect(error).to_contain_text("not valid JSON")
    page.keyboard.press("Escape")
    expect(form).to_be_hidden()

    # Hidden (another sidebar tab), the panel stops polling.
    page.locator('.jp-SideBar [data-id="filebrowser"]').first.click()
    expect(panel).to_be_hidden()
    page.wait_for_timeout(500)  # a request already on its way
    polled: list[str] = []
    page.on("request", lambda r: polled.append(r.url) if "/vre/api/jobs" in r.url else None)
    page.wait_for_timeout(4_500)
    assert not polled, f"the hidden panel still polls: {polled}"

    # The palette command shows it again (and it polls again).
    page.keyboard.press("Control+Shift+c")
    palette = page.locator(".lm-CommandPalette")
    expect(palette).to_be_visible()
    page.keyboard.insert_text("Show Jobs")
    palette.locator('.lm-CommandPalette-item[data-command="vre:show-jobs"]').first.click()
    expect(panel).to_be_visible()
    for _ in range(20):
        if polled:
            break
        page.wait_for_timeout(500)
    assert polled, "the panel did not poll again once shown"

    # "Run as batch job" in the file browser's context menu opens the form with the path.
    page.locator('.jp-SideBar [data-id="filebrowser"]').first.click()
    page.locator('.jp-DirListing-item[title*="project"]').first.dblclick()
    item = page.locator('.jp-DirListing-item[title*="panel-test.ipynb"]').first
    expect(item).to_be_visible()
    item.click(button="right")
    page.locator('.lm-Menu-item[data-command="vre:run-as-job"]').click()
    expect(panel).to_be_visible()
    expect(form.get_by_label("Notebook or script")).to_have_value(NOTEBOOK)

    # Only the session's own endpoints were used: the list answers the project's jobs.
    jobs = page.request.get(f"{alice.server_url(PROJECT)}/vre/api/jobs?project={PROJECT}").json()["jobs"]
    assert any(j["id"] == job["id"] and j["state"] == "succeeded" for j in jobs), json.dumps(jobs)[:500]
