"""Notebook widgets (ipywidgets, tqdm.notebook, itkwidgets) in a real session in Chromium, with no
network.

The kernel side (ipywidgets, tqdm) and the Lab's widget manager (jupyterlab_widgets' prebuilt
extension) ship in the session environment and the notebook image; the widgets' comm messages
ride the kernel websocket and the manager's code comes from the Lab's own extensions route. Every
request the page makes is recorded: one to any host but the hub's address fails the test, and so
does any answer the access layer refuses (an error status or an ``access.refused`` /
``download.refused`` event), since widgets are neither a new route nor a download. itkwidgets'
viewer comes from the session's own ``static/vre-itk/`` (scripts/itk_assets.py).
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
PlaywrightError = pytest.importorskip("playwright.sync_api").Error
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
    """The layer's refusals recorded from ``since`` on, less the count of anonymous requests of the
    minute the test logged in: the layer records the rest of a minute's anonymous requests (here:
    the login's own redirect through the layer) only once that minute is over."""
    store = open_store(load(environ=hub.env))
    login_minute = since[:16] + "Z"

    def of_the_login(e: dict) -> bool:
        details = e.get("details") or {}
        return (e.get("actor") == "anonymous" and details.get("aggregate") == "rest_of_minute"
                and details.get("minute", "") <= login_minute)

    return [e for action in ("access.refused", "download.refused")
            for e in store.query(action=action, source="access-layer") if e["time"] >= since and not of_the_login(e)]


def now_text() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def open_notebook(page, hub) -> None:
    """alice spawns her session from the form and opens a new notebook from the launcher."""
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

    open_notebook(page, hub)
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
    assert (refused := refusals(hub, since)) == [], f"the access layer refused: {refused}"


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


def open_itk_notebook(page, hub, name: str, cells: list[str]) -> None:
    """Spawn alice's session from the form, write ``name`` with ``cells`` (code, not run) into her
    home through the contents API, and open it in the Lab on the session's default kernel.

    All the cells exist before the viewer does: none has to be added below it by keyboard (its
    frame can hold the focus) and each is run by index (run_itk_cell)."""
    login_ok(page, hub, "alice")
    page.goto(f"{hub.url}/hub/spawn/alice/{PROJECT}")
    with page.expect_navigation():
        page.locator('#spawn_form [type="submit"]').click()
    expect(page.locator(".jp-Launcher")).to_be_visible(timeout=LAB_TIMEOUT_MS)
    alice = hub.client("alice")
    specs = alice.server_api(PROJECT, "GET", "/kernelspecs").json()
    kernel = specs["kernelspecs"][specs["default"]]["spec"]
    notebook = {"nbformat": 4, "nbformat_minor": 5,
                "metadata": {"kernelspec": {"name": specs["default"], "display_name": kernel["display_name"],
                                            "language": "python"}},
                "cells": [{"cell_type": "code", "id": f"c{i}", "source": code, "metadata": {},
                           "outputs": [], "execution_count": None} for i, code in enumerate(cells)]}
    r = alice.server_api(PROJECT, "PUT", f"/contents/{name}", json={"type": "notebook", "content": notebook})
    assert r.status_code in (200, 201), f"writing {name}: {r.status_code} {r.text}"
    page.goto(f"{alice.server_url(PROJECT)}/lab/tree/{name}")
    panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    expect(panel.locator(".jp-Notebook .jp-Cell")).to_have_count(len(cells), timeout=LAB_TIMEOUT_MS)
    expect(page.locator("#jp-main-statusbar")).to_contain_text(re.compile(r"Python 3 \(.+\) \| Idle"),
                                                               timeout=LAB_TIMEOUT_MS)


# Once a viewer renders (WebGL on Chromium's software renderer, --disable-gpu), the Lab's page can
# go without new frames for long stretches, and Playwright's locator actions and waits, which wait
# for frames, stall with it. From the first viewer on, the test reads and acts on the page by
# script (page.evaluate: DOM state, events) and takes screenshots with Chromium's own capture.
NOTEBOOK_JS = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook"
CELL_STATE = """([notebook, i]) => {
    const cell = document.querySelectorAll(notebook + ' .jp-Cell')[i];
    if (!cell) return null;
    const text = sel => (cell.querySelector(sel) || {}).textContent || '';
    return {active: cell.classList.contains('jp-mod-active'), prompt: text('.jp-InputArea .jp-InputPrompt'),
            output: text('.jp-OutputArea')};
}"""
SELECT_CELL = """([notebook, i]) => {  // what a press on the cell's prompt does
    const prompt = document.querySelectorAll(notebook + ' .jp-Cell')[i].querySelector('.jp-InputPrompt');
    for (const type of ['mousedown', 'mouseup'])
        prompt.dispatchEvent(new MouseEvent(type, {bubbles: true, cancelable: true, button: 0}));
}"""
RUN_BUTTON = """() => {  // the notebook toolbar's run button acts on mousedown (it takes no focus)
    const button = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-NotebookPanel-toolbar '
                                          + '[data-command="notebook:run-cell-and-select-next"]');
    button.dispatchEvent(new MouseEvent('mousedown', {bubbles: true, cancelable: true, button: 0}));
}"""
VIEWER_FRAME = """([notebook, i]) => {
    const frame = document.querySelectorAll(notebook + ' .jp-Cell')[i].querySelector('.jp-OutputArea iframe');
    if (!frame) return null;
    frame.scrollIntoView({block: 'nearest'});
    const box = frame.getBoundingClientRect();
    return {src: frame.src, x: box.x, y: box.y, width: box.width, height: box.height};
}"""


def track_in_flight(page) -> None:
    """Keep the page's requests that have no answer yet, with when they were sent (``in_flight``)."""
    import time

    pending = page.vre_in_flight = {}
    page.context.on("request", lambda r: pending.__setitem__(r, time.monotonic()))
    page.context.on("requestfinished", lambda r: pending.pop(r, None))
    page.context.on("requestfailed", lambda r: pending.pop(r, None))


def in_flight(page) -> list[str]:
    """The page's unanswered requests, oldest first: "<age> s <method> <url>"."""
    import time

    now = time.monotonic()
    pending = sorted(getattr(page, "vre_in_flight", {}).items(), key=lambda kv: kv[1])
    return [f"{now - t:.0f} s {r.method} {r.url}"[:200] for r, t in pending]


def poll(page, js: str, arg, until, *, timeout_s: float, what: str):
    """``page.evaluate(js, arg)`` until ``until(value)`` holds; returns that value."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = page.evaluate(js, arg)
        except PlaywrightError as e:  # a frame between two pages (its context went away)
            value = None
            print(f"{what}: {e.message.splitlines()[0]}")
        if value and until(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s; last seen: {value!r}"[:2000])
        page.wait_for_timeout(500)


def run_itk_cell(page, index: int, expect_text: str) -> None:
    """Run cell ``index`` of the notebook in front with the toolbar's run button, which then selects
    the next cell, so the cells run in order: no key press (the viewer's frame can hold the focus)
    and no pointer (cells below a viewer shift as the Lab's content-visibility windowing re-measures
    them). Retried while its prompt shows that it never ran; done once ``expect_text`` is in its
    output and its prompt shows an execution count."""
    arg = [NOTEBOOK_JS, index]
    for attempt in range(3):
        state = poll(page, CELL_STATE, arg, bool, timeout_s=30, what=f"cell {index}")
        if not state["active"]:  # a retry: running selected the next cell
            page.evaluate(SELECT_CELL, arg)
            poll(page, CELL_STATE, arg, lambda s: s["active"], timeout_s=30, what=f"cell {index} selected")
        page.evaluate(RUN_BUTTON)
        try:  # running shows "[*]" at once, then "[n]"
            poll(page, CELL_STATE, arg, lambda s: re.search(r"\[[\d*]+\]", s["prompt"]), timeout_s=10,
                 what=f"cell {index} started")
            break
        except AssertionError:  # the Lab dropped the request (test_lab.run_cell): it never ran
            print(f"cell {index}: not started, attempt {attempt + 1}")
    poll(page, CELL_STATE, arg, lambda s: expect_text in s["output"] and re.search(r"\[\d+\]", s["prompt"]),
         timeout_s=120, what=f"cell {index} output {expect_text!r}")


def ask_again(page, url: str) -> str:
    """Status and time of ``url`` fetched by the test with the page's cookies (for a diagnosis)."""
    import time

    t0 = time.monotonic()
    try:
        r = page.request.get(url, timeout=20_000)
        return f"{r.status} in {time.monotonic() - t0:.1f} s"
    except PlaywrightError as e:
        return f"no answer in {time.monotonic() - t0:.1f} s ({e.message.splitlines()[0]})"


def viewer_shot(page, *, until, cell: int = 0, timeout_s: float = 180, what: str = "") -> bytes:
    """Screenshots of the viewer's frame in the output of ``cell`` until ``until(png)`` holds."""
    import time

    arg = [NOTEBOOK_JS, cell]
    box = poll(page, VIEWER_FRAME, arg, bool, timeout_s=timeout_s, what=f"viewer {what}: its frame")
    # the viewer's page (not an error page) with its render window
    assert urlsplit(box["src"]).path.endswith(ITK_STATIC + "itk-vtk-viewer/index.html"), box["src"]
    deadline = time.monotonic() + timeout_s
    src = box["src"].split("#")[0]
    said = False
    while not (viewer := next((f for f in page.frames if f.url.split("#")[0] == src), None)):
        frames = [f.url for f in page.frames]
        assert time.monotonic() < deadline, (f"viewer {what}: its frame never loaded {src}; frames: {frames}; "
                                             f"requests in flight: {in_flight(page)}")
        if not said and time.monotonic() > deadline - timeout_s + 30:
            # seen in three fresh-clone CI runs (docker sessions): the frame's page requested and
            # not answered for minutes, then loaded right after the failure. Which hop holds it:
            # the same URL asked again now, with the browser's cookies, through the same hub
            print(f"viewer {what}: its frame has not loaded {src} in 30 s (frames: {frames}); "
                  f"requests in flight: {in_flight(page)}; the same URL asked again: {ask_again(page, src)}")
            said = True
        page.wait_for_timeout(500)   # the iframe is there before its page; Playwright keeps its events flowing
    poll(viewer, "() => !!document.querySelector('canvas')", None, bool, timeout_s=timeout_s,
         what=f"viewer {what}: its canvas")
    deadline = time.monotonic() + timeout_s
    png = b""
    while time.monotonic() < deadline:
        box = page.evaluate(VIEWER_FRAME, arg)
        clip = {k: box[k] for k in ("x", "y", "width", "height")}
        shot = page.context.new_cdp_session(page).send("Page.captureScreenshot", {
            "format": "png", "clip": {**clip, "scale": 1}})
        png = base64.b64decode(shot["data"])
        if until(png):
            print(f"viewer {what}: as expected after {time.monotonic() - deadline + timeout_s:.0f} s")
            return png
        print(f"viewer {what}: {lit_pixels(png)} lit pixels, not yet")
        page.wait_for_timeout(2000)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"itk-{what or 'viewer'}.png").write_bytes(png)
    raise AssertionError(f"the viewer ({what}) never showed what was expected; last screenshot in test-artifacts")


def itk_session(hub, page, name: str, cells: list[str]):
    """Open notebook ``name`` of ``cells`` with every request recorded; returns (foreign, failed,
    assets, since)."""
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
    track_in_flight(page)
    page.on("websocket", lambda ws: seen(ws.url))
    # for the test's artifacts: what the viewer's frames loaded and what failed
    page.on("console", lambda m: print(f"console {m.type}: {m.text}"[:300]))
    page.on("framenavigated", lambda f: print(f"frame {f.url}"))
    page.context.on("requestfailed", lambda r: print(f"request failed {r.url} {r.failure}"))
    open_itk_notebook(page, hub, name, cells)
    failed.clear()
    return foreign, failed, assets, now_text()


def itk_checks(hub, foreign, failed, assets, since) -> None:
    assert any(a.startswith(("200 ", "304 ")) and "itk-vtk-viewer/index.html" in a for a in assets), assets
    assert foreign == [], f"requests to hosts other than the hub: {foreign}"
    assert failed == [], f"session requests answered with an error: {failed}"
    assert (refused := refusals(hub, since)) == [], f"the access layer refused: {refused}"


def test_itkwidgets_numpy_volume_offline(hub, browser_page, alice_lab):
    """``from itkwidgets import view`` unchanged on a 3-D numpy volume: it renders (lit pixels in
    the viewer's frame), a z plane and then another one show different pixels, and every request
    stays on the hub; the viewer's files come from the session's static/vre-itk/."""
    page = browser_page
    recorded = itk_session(hub, page, "itk-numpy.ipynb", [
        VOLUME,
        "viewer.set_view_mode('ZPlane')\nviewer.set_z_slice(8)\nprint('z=8')",
        "viewer.set_z_slice(56)\nprint('z=56')"])
    run_itk_cell(page, 0, "volume (64, 64, 64)")
    first = viewer_shot(page, until=lambda png: lit_pixels(png) > 2_000, what="numpy-volume")
    run_itk_cell(page, 1, "z=8")
    at8 = viewer_shot(page, until=lambda png: changed_pixels(png, first) > 2_000 and lit_pixels(png) > 500,
                      what="numpy-z8")
    run_itk_cell(page, 2, "z=56")
    viewer_shot(page, until=lambda png: changed_pixels(png, at8) > 500 and lit_pixels(png) > 500,
                what="numpy-z56")
    itk_checks(hub, *recorded)


def test_itkwidgets_ct_series_offline(hub, browser_page, alice_lab):
    """The same for a CT series of the project's dataset, read from /data with SimpleITK."""
    page = browser_page
    recorded = itk_session(hub, page, "itk-ct.ipynb", [
        CT,
        "ct_viewer.set_view_mode('ZPlane')\n"
        "ct_viewer.set_z_slice(ct.TransformIndexToPhysicalPoint((0, 0, 2))[2])\nprint('slice 2')",
        "ct_viewer.set_z_slice(ct.TransformIndexToPhysicalPoint((0, 0, 9))[2])\nprint('slice 9')"])
    run_itk_cell(page, 0, "ct (64, 64, 12)")
    first = viewer_shot(page, until=lambda png: lit_pixels(png) > 2_000, what="ct")
    run_itk_cell(page, 1, "slice 2")
    at2 = viewer_shot(page, until=lambda png: changed_pixels(png, first) > 2_000 and lit_pixels(png) > 500,
                      what="ct-slice2")
    run_itk_cell(page, 2, "slice 9")
    viewer_shot(page, until=lambda png: changed_pixels(png, at2) > 200, what="ct-slice9")
    itk_checks(hub, *recorded)
