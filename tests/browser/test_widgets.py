"""Notebook widgets (ipywidgets, tqdm.notebook) in a real session in Chromium, with no network.

The kernel side (ipywidgets, tqdm) and the Lab's widget manager (jupyterlab_widgets' prebuilt
extension) ship in the session environment and the notebook image; the widgets' comm messages
ride the kernel websocket and the manager's code comes from the Lab's own extensions route. Every
request the page makes is recorded: one to any host but the hub's address fails the test, and so
does any answer the access layer refuses (an error status or an ``access.refused`` /
``download.refused`` event), since widgets are neither a new route nor a download.
"""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from test_lab import LAB_TIMEOUT_MS, PROJECT, forget_lab_layout, login_ok

from vre.audit import open_store
from vre.settings import load

SESSION_BACKENDS = ["sqlite", pytest.param("docker", marks=pytest.mark.docker)]
pytestmark = [pytest.mark.integration, pytest.mark.browser,
              pytest.mark.parametrize("hub", SESSION_BACKENDS, indirect=True)]
expect = pytest.importorskip("playwright.sync_api").expect
PlaywrightTimeout = pytest.importorskip("playwright.sync_api").TimeoutError
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
MANAGER = "/lab/extensions/@jupyter-widgets/jupyterlab-manager/"

INTERACT = """from ipywidgets import IntSlider, interact
@interact(n=IntSlider(value=3, min=0, max=10, description="n"))
def square(n):
    print(f"n={n} square={n * n}")"""

TQDM = """import time
from tqdm.notebook import tqdm
for _ in tqdm(range(40), desc="work"):
    time.sleep(0.05)"""


@pytest.fixture
def alice_lab(hub):
    """alice's session on ``hub`` starts from the spawn form with a fresh Lab layout (a session that
    another module on this shared hub left running is stopped first) and is stopped afterwards."""
    alice = hub.client("alice")
    if alice.server_state(PROJECT) is not None:
        alice.stop(PROJECT, timeout=120)
    forget_lab_layout(hub)
    yield
    for log in Path(hub.env["VRE_RUN_DIR"]).glob("sessions/*alice*/server.log"):
        ARTIFACTS.mkdir(exist_ok=True)  # the session's own log, for when the Lab misbehaved
        shutil.copy(log, ARTIFACTS / f"browser-widgets-{hub.backend}-{log.parent.name}.log")
    if alice.server_state(PROJECT) is not None:
        alice.stop(PROJECT, timeout=120)
    forget_lab_layout(hub)


def run_cell(page, index: int, code: str, expect_text: str):
    """test_lab.run_cell for outputs that hold widgets: an Output widget nests output areas of its
    own, so this returns the cell's outer output area."""
    cell = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell").nth(index)
    editor = cell.locator(".cm-content")
    editor.click()
    page.keyboard.insert_text(code)
    expect(editor).to_contain_text(code.splitlines()[0])
    page.keyboard.press("Shift+Enter")
    try:
        expect(cell.locator(".jp-InputPrompt")).to_contain_text(re.compile(r"\[[\d*]+\]"), timeout=10_000)
    except AssertionError:  # Lab dropped the request (see test_lab.run_cell): the cell never ran
        cell.locator(".jp-InputPrompt").click()
        page.keyboard.press("Control+Enter")
    output = cell.locator(".jp-OutputArea").first
    expect(output).to_contain_text(expect_text, timeout=60_000)
    expect(cell.locator(".jp-InputPrompt")).to_contain_text(re.compile(r"\[\d+\]"))
    return output


def refusals(hub, since: str) -> list[dict]:
    store = open_store(load(environ=hub.env))
    return [e for action in ("access.refused", "download.refused")
            for e in store.query(action=action, source="access-layer") if e["time"] >= since]


def now_text() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_interact_and_tqdm_offline(hub, browser_page, alice_lab):
    page = browser_page
    hub_host = urlsplit(hub.url).netloc
    assert hub_host.startswith("127.0.0.1:"), hub.url
    foreign, failed, manager = [], [], []

    def seen(url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob", "about"):
            return
        if parts.scheme not in ("http", "https", "ws", "wss") or parts.netloc != hub_host:
            foreign.append(url)

    def answered(response) -> None:
        if MANAGER in urlsplit(response.url).path:
            manager.append(f"{response.status} {response.url}")
        if response.status >= 400 and "/user/alice/" in response.url:
            failed.append(f"{response.status} {response.request.method} {response.url}")

    page.context.on("request", lambda r: seen(r.url))  # the conftest aborts them; this test fails on them
    page.on("websocket", lambda ws: seen(ws.url))       # websockets are no "request" events
    page.on("response", answered)

    login_ok(page, hub, "alice")
    page.goto(f"{hub.url}/hub/spawn/alice/{PROJECT}")
    with page.expect_navigation():
        page.locator('#spawn_form [type="submit"]').click()
    tile = page.locator('.jp-Launcher .jp-LauncherCard[data-category="Notebook"]').first
    expect(tile).to_be_visible(timeout=LAB_TIMEOUT_MS)
    tile.click()
    expect(page.locator(".jp-NotebookPanel")).to_have_count(1, timeout=60_000)
    expect(page.locator("#jp-main-statusbar")).to_contain_text(re.compile(r"Python 3 \(.+\) \| Idle"),
                                                               timeout=LAB_TIMEOUT_MS)
    # From here on the page does only widget work: nothing of it may be refused. (The Lab's start
    # already met the layer's refusals of unreviewed routes, lsp/ and server-proxy/: not widgets.)
    failed.clear()
    since = now_text()

    # interact: the slider renders with its first value printed below it
    out = run_cell(page, 0, INTERACT, "n=3 square=9")
    slider = out.locator(".widget-slider")
    expect(slider).to_be_visible()
    printed = out.locator(".widget-output")
    expect(printed).to_have_text(re.compile(r"^\s*n=3 square=9\s*$"))
    # the keyboard on the slider's handle moves it: the kernel reruns the function
    out.locator(".noUi-handle").focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    expect(printed).to_have_text(re.compile(r"^\s*n=5 square=25\s*$"))
    # and so does typing a value into its readout
    readout = out.locator(".widget-readout")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type("7")
    page.keyboard.press("Enter")
    expect(printed).to_have_text(re.compile(r"^\s*n=7 square=49\s*$"))
    expect(readout).to_have_text("7")

    # tqdm.notebook: a progress widget that ends full, at the final count, in the success style
    bar_out = run_cell(page, 1, TQDM, "40/40")
    expect(bar_out.locator(".widget-hprogress")).to_be_visible()
    expect(bar_out).to_contain_text("100%")
    expect(bar_out).to_contain_text("work")
    expect(bar_out.locator(".progress-bar.progress-bar-success")).to_have_count(1)

    # the widget manager came from the Lab's own extensions route, through the access layer
    assert manager and all(m.startswith(("200 ", "304 ")) for m in manager), \
        f"the widget manager's assets ({MANAGER}): {manager}"
    assert foreign == [], f"requests to hosts other than the hub ({hub_host}): {foreign}"
    assert failed == [], f"session requests answered with an error: {failed}"
    assert refusals(hub, since) == [], "the access layer refused something"


# --- itkwidgets: the viewer from the session's own server (scripts/itk_assets.py) -------------------
ITK_STATIC = "/static/vre-itk/"
VOLUME = """import numpy as np
from itkwidgets import view
z, y, x = np.mgrid[0:64, 0:64, 0:64]
# a ball whose brightness and radius change along z: every z slice looks different
volume = ((((x - 32) ** 2 + (y - 32) ** 2) < (6 + z // 3) ** 2) * (40 + 3 * z)).astype(np.uint8)
print("volume", volume.shape)
viewer = view(volume, ui_collapsed=True)"""
CT = """import os
import SimpleITK as sitk
from itkwidgets import view
root = '/data/lung-ct-screening'
series_dir = next(d for d, _, files in sorted(os.walk(root)) if files and sitk.ImageSeriesReader.GetGDCMSeriesIDs(d))
reader = sitk.ImageSeriesReader()
reader.SetFileNames(reader.GetGDCMSeriesFileNames(series_dir))
ct = reader.Execute()
print("ct", ct.GetSize())
ct_viewer = view(ct, ui_collapsed=True)"""


def lit_pixels(png: bytes) -> int:
    """Pixels of a screenshot that differ clearly from its most common colour (the background)."""
    import io

    from PIL import Image, ImageChops

    img = Image.open(io.BytesIO(png)).convert("RGB")
    background = max(img.getcolors(img.width * img.height))[1]
    diff = ImageChops.difference(img, Image.new("RGB", img.size, background)).convert("L")
    return sum(diff.histogram()[25:])


def changed_pixels(a: bytes, b: bytes) -> int:
    import io

    from PIL import Image, ImageChops

    ia, ib = (Image.open(io.BytesIO(p)).convert("RGB") for p in (a, b))
    if ia.size != ib.size:
        return ia.width * ia.height
    return sum(ImageChops.difference(ia, ib).convert("L").histogram()[25:])


def viewer_shot(page, out, *, until, timeout_s: float = 180, what: str = "") -> bytes:
    """Screenshots of the viewer's frame in ``out`` until ``until(png)`` holds."""
    import time

    frame = out.locator("iframe").first
    expect(frame).to_be_visible(timeout=timeout_s * 1000)
    # the viewer's page (not an error page) with its render window
    expect(frame).to_have_attribute("src", re.compile(re.escape(ITK_STATIC) + "itk-vtk-viewer/index.html"))
    expect(out.frame_locator("iframe").first.locator("canvas").first).to_be_attached(timeout=timeout_s * 1000)
    deadline = time.monotonic() + timeout_s
    png = b""
    while time.monotonic() < deadline:
        try:  # Chromium's own capture of the frame's box: Playwright's screenshots first wait for
            # the page's fonts and a quiet frame, which WebGL on a software renderer may not give
            frame.scroll_into_view_if_needed()
            box = frame.bounding_box()
            shot = page.context.new_cdp_session(page).send("Page.captureScreenshot", {
                "format": "png", "clip": {**box, "scale": 1}})
            png = base64.b64decode(shot["data"])
        except PlaywrightTimeout:
            print(f"viewer {what}: screenshot timed out")
            continue
        if until(png):
            print(f"viewer {what}: as expected after {time.monotonic() - deadline + timeout_s:.0f} s")
            return png
        print(f"viewer {what}: {lit_pixels(png)} lit pixels, not yet")
        page.wait_for_timeout(2_000)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"itk-{what or 'viewer'}.png").write_bytes(png)
    raise AssertionError(f"the viewer ({what}) never showed what was expected; last screenshot in test-artifacts")


def open_notebook(page, hub) -> None:
    login_ok(page, hub, "alice")
    page.goto(f"{hub.url}/hub/spawn/alice/{PROJECT}")
    with page.expect_navigation():
        page.locator('#spawn_form [type="submit"]').click()
    tile = page.locator('.jp-Launcher .jp-LauncherCard[data-category="Notebook"]').first
    expect(tile).to_be_visible(timeout=LAB_TIMEOUT_MS)
    tile.click()
    expect(page.locator(".jp-NotebookPanel")).to_have_count(1, timeout=60_000)
    expect(page.locator("#jp-main-statusbar")).to_contain_text(re.compile(r"Python 3 \(.+\) \| Idle"),
                                                               timeout=LAB_TIMEOUT_MS)


def itk_cell(page, index: int, code: str, expect_text: str):
    """run_cell on cell ``index``, adding it first when the notebook has no such cell (the
    viewer's frame can take the keyboard focus, so Shift+Enter need not have added one)."""
    cells = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell")
    while cells.count() <= index:
        count = cells.count()
        cells.last.locator(".jp-InputPrompt").click()
        page.keyboard.press("Escape")
        page.keyboard.press("b")
        expect(cells).to_have_count(count + 1)
    # the Lab renders only the cells in view (its notebook is windowed): below a viewer, scroll first
    cells.nth(index).scroll_into_view_if_needed()
    expect(cells.nth(index).locator(".cm-content")).to_be_attached()
    return run_cell(page, index, code, expect_text)


def itk_session(hub, page):
    """Open a notebook with every request recorded; returns (foreign, failed, assets, since)."""
    hub_host = urlsplit(hub.url).netloc
    assert hub_host.startswith("127.0.0.1:"), hub.url
    foreign, failed, assets = [], [], []

    def seen(url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob", "about"):
            return
        if parts.scheme not in ("http", "https", "ws", "wss") or parts.netloc != hub_host:
            foreign.append(url)

    def answered(response) -> None:
        if ITK_STATIC in urlsplit(response.url).path:
            assets.append(f"{response.status} {urlsplit(response.url).path}")
        if response.status >= 400 and "/user/alice/" in response.url:
            failed.append(f"{response.status} {response.request.method} {response.url}")

    page.context.on("request", lambda r: seen(r.url))
    page.context.on("response", answered)   # the context's: the viewer runs in a frame
    page.on("websocket", lambda ws: seen(ws.url))
    # for the test's artifacts: what the viewer's frames loaded and what failed
    page.on("console", lambda m: print(f"console {m.type}: {m.text}"[:300]))
    page.on("framenavigated", lambda f: print(f"frame {f.url}"))
    page.context.on("requestfailed", lambda r: print(f"request failed {r.url} {r.failure}"))
    open_notebook(page, hub)
    failed.clear()
    return foreign, failed, assets, now_text()


def itk_checks(hub, foreign, failed, assets, since) -> None:
    assert any(a.startswith(("200 ", "304 ")) and "itk-vtk-viewer/index.html" in a for a in assets), assets
    assert foreign == [], f"requests to hosts other than the hub: {foreign}"
    assert failed == [], f"session requests answered with an error: {failed}"
    assert refusals(hub, since) == [], "the access layer refused something"


def test_itkwidgets_numpy_volume_offline(hub, browser_page, alice_lab):
    """``from itkwidgets import view`` unchanged on a 3-D numpy volume: it renders (lit pixels in
    the viewer's frame), a z plane and then another one show different pixels, and every request
    stays on the hub; the viewer's files come from the session's static/vre-itk/."""
    page = browser_page
    recorded = itk_session(hub, page)
    out = itk_cell(page, 0, VOLUME, "volume (64, 64, 64)")
    first = viewer_shot(page, out, until=lambda png: lit_pixels(png) > 2_000, what="numpy-volume")
    itk_cell(page, 1, "viewer.set_view_mode('ZPlane')\nviewer.set_z_slice(8)\nprint('z=8')", "z=8")
    at8 = viewer_shot(page, out, until=lambda png: changed_pixels(png, first) > 2_000 and lit_pixels(png) > 500,
                      what="numpy-z8")
    itk_cell(page, 2, "viewer.set_z_slice(56)\nprint('z=56')", "z=56")
    viewer_shot(page, out, until=lambda png: changed_pixels(png, at8) > 500 and lit_pixels(png) > 500,
                what="numpy-z56")
    itk_checks(hub, *recorded)


def test_itkwidgets_ct_series_offline(hub, browser_page, alice_lab):
    """The same for a CT series of the project's dataset, read from /data with SimpleITK."""
    page = browser_page
    recorded = itk_session(hub, page)
    out = itk_cell(page, 0, CT, "ct (64, 64, 12)")
    first = viewer_shot(page, out, until=lambda png: lit_pixels(png) > 2_000, what="ct")
    itk_cell(page, 1, "ct_viewer.set_view_mode('ZPlane')\n"
                      "ct_viewer.set_z_slice(ct.TransformIndexToPhysicalPoint((0, 0, 2))[2])\nprint('slice 2')",
             "slice 2")
    at2 = viewer_shot(page, out, until=lambda png: changed_pixels(png, first) > 2_000 and lit_pixels(png) > 500,
                      what="ct-slice2")
    itk_cell(page, 2, "ct_viewer.set_z_slice(ct.TransformIndexToPhysicalPoint((0, 0, 9))[2])\nprint('slice 9')",
             "slice 9")
    viewer_shot(page, out, until=lambda png: changed_pixels(png, at2) > 200, what="ct-slice9")
    itk_checks(hub, *recorded)
