"""The offline notebook viewer (itkwidgets' ``view`` call shape) in a real session in Chromium:
it renders with nothing fetched, scrolls, changes window/level and reads values under the cursor."""

from __future__ import annotations

import re

import pytest
from test_lab import LAB_TIMEOUT_MS, PROJECT, login_ok, run_cell, stop_alice_session  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.browser]
expect = pytest.importorskip("playwright.sync_api").expect

CODE = """from vre_session.notebook import view
import numpy as np
vol = np.zeros((5, 32, 32), dtype=np.int16)
vol[:, 8:24, 8:24] = (np.arange(5) * 100)[:, None, None]
view(vol, spacing=(2.0, 1.0, 1.0), window=(400, 200))"""


def test_view_in_a_notebook_offline(sqlite_hub, browser_page, stop_alice_session):  # noqa: F811
    page, hub = browser_page, sqlite_hub
    foreign = []
    page.on("request", lambda r: None if re.match(r"^(https?|wss?)://127\.0\.0\.1[:/]", r.url)
            or r.url.startswith(("data:", "blob:")) else foreign.append(r.url))
    login_ok(page, hub, "alice")
    page.goto(f"{hub.url}/hub/spawn/alice/{PROJECT}")
    with page.expect_navigation():
        page.locator('#spawn_form [type="submit"]').click()
    tile = page.locator('.jp-Launcher .jp-LauncherCard[data-category="Notebook"]').first
    expect(tile).to_be_visible(timeout=LAB_TIMEOUT_MS)
    tile.click()
    expect(page.locator(".jp-NotebookPanel")).to_be_visible(timeout=60_000)
    expect(page.locator(".jp-NotebookPanel")).to_have_count(1)  # the new notebook alone (nothing restored)
    expect(page.locator("#jp-main-statusbar")).to_contain_text(
        re.compile(r"Python 3 \(ipykernel\) \| Idle"), timeout=LAB_TIMEOUT_MS)
    output = run_cell(page, 0, CODE, "slice 3/5")  # rendered by the output's script: the middle slice
    viewer = output.locator(".vre-view")
    readout = viewer.locator(".r")
    expect(readout).to_contain_text("W 400 L 200")
    box = viewer.locator("canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, 100)  # the wheel scrolls slices (Lab keeps arrow keys for the notebook)
    expect(readout).to_contain_text("slice 4/5")
    viewer.locator("input.s").fill("4")  # the slider too
    expect(readout).to_contain_text("slice 5/5")
    viewer.locator("input.s").fill("3")
    viewer.locator("select.p").select_option("lung")
    expect(readout).to_contain_text("W 1500 L -600")
    page.mouse.move(box["x"] + box["width"] * 16.5 / 32, box["y"] + box["height"] * 16.5 / 32)  # pixel centre
    expect(readout).to_contain_text("value 300.0 at (16,16)")  # slice index 3 holds 3 * 100
    page.mouse.move(box["x"] + box["width"] * 2.5 / 32, box["y"] + box["height"] * 2.5 / 32)
    expect(readout).to_contain_text("value 0.0 at (2,2)")
    assert foreign == [], f"the notebook viewer fetched from elsewhere: {foreign}"
