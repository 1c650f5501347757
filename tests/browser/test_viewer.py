"""The VRE's JupyterLab extension in real Chromium, in a real sandboxed session of the real hub:
dataset browser, DICOM viewer (slices, window/level, HU readout, MPR, tags), "Open With" for a
.dcm file, "Insert code cell", and the download actions hidden for dataset paths.

Runs against the SQLite hub's small demo: alice's project ``lung-screening`` has the dataset
``lung-ct-screening`` = make_cohort('lung-ct', seed=1, patients=2, slices=12, size=64), whose
truth (nodule centres, landmark HU values) is regenerated here with the same parameters.
The extension must be built and installed first: ``bash extensions/build-labextension.sh``.
Screenshots go to test-artifacts/viewer-*.png; the viewer's one is copied to
docs/screenshot-viewer.png for the README.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from hubclient import HubClient
from labpage import dismiss_toasts

from vre.demo.provision import DATASETS
from vre.demo.synth import CT_LANDMARKS, HU_NODULE, Z_CENTER_MM, make_cohort

pytestmark = [pytest.mark.integration, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
PROJECT = "lung-screening"
SLUG = "lung-ct-screening"
LAB_TIMEOUT_MS = 90_000
LOCAL = re.compile(r"^(?:https?|wss?)://(?:127\.0\.0\.1|localhost)(?::\d+)?(?:/|$)|^(?:data|blob|about):")

expect = pytest.importorskip("playwright.sync_api").expect


# --- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """The demo cohort's truth, regenerated with the demo's parameters (deterministic)."""
    spec = next(d for d in DATASETS if d["slug"] == SLUG)
    return make_cohort(spec["kind"], tmp_path_factory.mktemp("truth"), seed=spec["seed"], **spec["small"])


@pytest.fixture(scope="module")
def alice(sqlite_hub):
    """alice's API client (token); her session is stopped when the module is done. Her project lets
    home files be downloaded (``all``), so the Lab's hiding of dataset downloads shows apart."""
    client = sqlite_hub.client("alice")
    if client.server_state(PROJECT) is not None:
        client.stop(PROJECT)
    sqlite_hub.vre("project", "set-downloads", PROJECT, "all")
    yield client
    sqlite_hub.vre("project", "set-downloads", PROJECT, "none")
    for log in Path(sqlite_hub.env["VRE_RUN_DIR"]).glob("sessions/*alice*/server.log"):
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(log, ARTIFACTS / f"viewer-session-{log.parent.name}.log")
    if client.server_state(PROJECT) is not None:
        client.stop(PROJECT)


@pytest.fixture
def lab(sqlite_hub, alice, browser_page):
    """A page logged in as alice, in her running lung-screening session's Lab (fresh layout)."""
    if alice.server_state(PROJECT) is None:
        alice.start(PROJECT, "small")
    page = browser_page
    login_cookies(page, sqlite_hub, "alice")
    open_lab(page, alice)
    return page


# --- helpers -----------------------------------------------------------------------------------
def login_cookies(page, hub, user: str) -> None:
    client = HubClient(hub.url, user)
    client.login(hub.passwords[user])
    assert client.logged_in(), f"login as {user} failed"
    page.context.add_cookies([
        {"name": c.name, "value": c.value, "url": f"{hub.url}{c.path or '/'}"} for c in client.http.cookies])


def watch_requests(page) -> list[str]:
    """Every request the page makes to a host other than this machine (there must be none)."""
    foreign: list[str] = []
    page.on("request", lambda r: None if LOCAL.match(r.url) else foreign.append(r.url))
    page.on("websocket", lambda ws: None if LOCAL.match(ws.url) else foreign.append(ws.url))
    return foreign


def open_lab(page, alice) -> None:
    page.goto(f"{alice.server_url(PROJECT)}/lab?reset")
    expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=LAB_TIMEOUT_MS)
    expect(page.locator('.jp-SideBar [data-id="vre-datasets"]').first).to_be_visible(timeout=LAB_TIMEOUT_MS)


def show_datasets(page):
    browser = page.locator(".vre-Browser")
    if not browser.is_visible():
        page.locator('.jp-SideBar [data-id="vre-datasets"]').first.click()
    expect(browser).to_be_visible()
    return browser


def series_row(page, patient_id: str):
    row = page.locator(f'.vre-SeriesRow[data-series-uid]:has-text("{patient_id}")').first
    expect(row).to_be_visible(timeout=30_000)
    return row


def voxel_of(meta: dict, point) -> tuple[int, int, int]:
    """(slice, row, column) of the voxel nearest to a patient point, from the API's geometry."""
    point = np.asarray(point, float)
    normal = np.asarray(meta["normal"])
    k = min(range(meta["num_slices"]), key=lambda i: abs(float(np.dot(normal, point - meta["slices"][i]["position"]))))
    origin, iop = np.asarray(meta["slices"][k]["position"]), np.asarray(meta["orientation"])
    row_spacing, col_spacing = meta["pixel_spacing"]
    return (k, round(float(np.dot(point - origin, iop[3:])) / row_spacing),
            round(float(np.dot(point - origin, iop[:3])) / col_spacing))


def series_meta(page, alice, uid: str) -> dict:
    """The series' metadata as the API returns it (asked with the browser's own login)."""
    r = page.request.get(f"{alice.server_url(PROJECT)}/vre/api/datasets/{SLUG}/series/{uid}", fail_on_status_code=True)
    return r.json()


def pane(page, stack: str = "native"):
    return page.locator(f".vre-Viewport-{stack}")


def index_of(page, stack: str = "native") -> int:
    return int(pane(page, stack).get_attribute("data-index"))


def show_index(page, stack: str, k: int) -> None:
    """Move the pane's slider to ``k`` and wait until that image is drawn."""
    pane(page, stack).locator(".vre-slider").fill(str(k))
    expect(pane(page, stack).locator("canvas")).to_have_attribute("data-index", str(k), timeout=30_000)


def hover_pixel(page, stack: str, row: int, col: int) -> str:
    """Put the mouse on image pixel (row, col) of a pane (from its drawn geometry); return the readout."""
    canvas = pane(page, stack).locator("canvas")
    box = canvas.bounding_box()
    g = canvas.evaluate("c => ({...c.dataset})")
    x = box["x"] + float(g["ox"]) + (col + 0.5) * float(g["sx"])
    y = box["y"] + float(g["oy"]) + (row + 0.5) * float(g["sy"])
    page.mouse.move(x, y)
    value = pane(page, stack).locator(".vre-readout-value")
    expect(value).to_have_attribute("data-row", str(row))
    expect(value).to_have_attribute("data-col", str(col))
    return value.inner_text()


def wl_text(page, stack: str = "native") -> str:
    return pane(page, stack).locator(".vre-readout-wl").inner_text()


def painted_meta(page) -> dict:
    return page.evaluate("""() => { const v = document.querySelector('.vre-Viewer').__vreViewer;
        const s = v.stats; return {meta: s.metaLoaded - s.created, paint: s.firstPaint - s.created,
        frames: s.frames.map(f => f.painted - f.requested), render: s.frames.map(f => f.renderMs)}; }""")


# --- 1. the whole journey: log in, start, browse, view ---------------------------------------------
def test_browse_filter_open_scroll_window_readout_mpr(sqlite_hub, alice, browser_page, cohort):
    page = browser_page
    hub = sqlite_hub
    foreign = watch_requests(page)
    if alice.server_state(PROJECT) is not None:  # another test left it running: start from scratch
        alice.stop(PROJECT)

    # Log in with the form and start the session from the home page.
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", "alice")
    page.fill("#password_input", hub.passwords["alice"])
    page.click("#login_submit")
    page.wait_for_url(re.compile(r"/hub/home/?$"))
    page.locator(f"#project-{PROJECT} .start-server").click()
    page.wait_for_url(re.compile(rf"/hub/spawn/alice/{PROJECT}$"))
    page.locator('#spawn_form input[name="profile"][value="small"]').check()
    with page.expect_navigation():
        page.locator('#spawn_form [type="submit"]').click()
    expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=LAB_TIMEOUT_MS)
    page.goto(f"{alice.server_url(PROJECT)}/lab?reset")  # a fresh layout, whatever an earlier test saved
    expect(page.locator('.jp-SideBar [data-id="vre-datasets"]').first).to_be_visible(timeout=LAB_TIMEOUT_MS)

    # The dataset browser: catalogue record, filters, the series with thumbnails.
    browser = show_datasets(page)
    expect(browser.locator(".vre-About-title")).to_contain_text("Lung cancer screening")
    expect(browser.locator(".vre-About-card")).to_contain_text("Tier 2")
    browser.locator(".vre-About-details summary").click()
    expect(browser.locator(".vre-field-terms-of-use")).to_contain_text("airlock")
    expect(browser.locator(".vre-field-publisher")).to_contain_text("VRE demo data steward")
    browser.locator(".vre-About-details summary").click()  # folded again: room for the list
    # "Not granted": the other demo project's dataset, its record only (through the session's relay
    # to the VRE service's catalogue API), filtered; "Request access" opens the hub's catalogue page
    others = browser.locator(".vre-Others")
    others.locator(".vre-Others-summary").click()
    other = others.locator('.vre-Others-row[data-slug="prostate-mri"]')
    expect(other).to_contain_text("Prostate cancer", timeout=30_000)
    expect(other).to_contain_text("MR")
    expect(other).to_have_attribute("data-access", "not granted")
    expect(others.locator(f'.vre-Others-row[data-slug="{SLUG}"]')).to_have_count(0)  # granted: not here
    expect(others.locator(".vre-Others-summary")).to_have_text("Not granted (1)")
    others.locator(".vre-others-modality").select_option("CT")
    expect(others.locator(".vre-Others-row")).to_have_count(0)
    expect(others.locator(".vre-Others-message")).to_contain_text("No other dataset matches")
    others.locator(".vre-others-modality").select_option("MR")
    expect(other).to_be_visible()
    request = other.locator("a.vre-Others-request")
    expect(request).to_have_text("Request access")
    expect(request).to_have_attribute("href", re.compile(r"/services/vre/catalogue#dataset-prostate-mri$"))
    expect(request).to_have_attribute("target", "_blank")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "viewer-not-granted.png"))
    with page.context.expect_page() as opened:
        request.click()
    tab = opened.value
    tab.wait_for_load_state()
    expect(tab.locator("#dataset-prostate-mri")).to_contain_text("Prostate")  # the hub's page, its form
    expect(tab.locator("#dataset-prostate-mri .request-toggle")).to_be_visible()
    tab.close()
    expect(others.locator("a.vre-Browser-catalogue")).to_have_attribute(
        "href", re.compile(r"/services/vre/catalogue$"))
    others.locator(".vre-others-modality").select_option("")
    others.locator(".vre-Others-summary").click()  # folded again: room for the list
    expect(browser.locator(".vre-Count")).to_have_attribute("data-total", "2")
    browser.locator(".vre-filter-modality").select_option("CT")
    expect(browser.locator(".vre-Count")).to_have_text("2 series")
    browser.locator(".vre-search").fill("LUNG-0002")
    expect(browser.locator(".vre-Count")).to_have_text("1 series")
    browser.locator(".vre-search").fill("")
    expect(browser.locator(".vre-Count")).to_have_text("2 series")
    # drill-down: patient -> study -> series
    browser.locator(".vre-tab-patients").click()
    browser.locator('.vre-PatientRow[data-patient-id="LUNG-0001"]').click()
    browser.locator(".vre-StudyRow").first.click()
    expect(browser.locator(".vre-Crumbs")).to_contain_text("LUNG-0001")
    patient = cohort.patients[0]
    row = series_row(page, patient.patient_id)
    expect(row).to_contain_text("CT · CHEST · 12 images")
    expect(row.locator(".vre-Thumb img")).to_be_visible(timeout=30_000)
    uid = row.get_attribute("data-series-uid")
    ARTIFACTS.mkdir(exist_ok=True)
    dismiss_toasts(page)
    page.screenshot(path=str(ARTIFACTS / "viewer-dataset-browser.png"))

    # Open it: the slices come as streams (one request per contiguous run), not one request each.
    api_requests: list[str] = []
    page.on("request", lambda r: api_requests.append(r.url) if "/vre/api/datasets/" in r.url else None)
    row.locator(".vre-act-open").click()
    viewer = page.locator('.vre-Viewer[data-painted="true"]')
    expect(viewer).to_be_visible(timeout=60_000)
    page.wait_for_function("() => document.querySelector('.vre-Viewer').__vreViewer.loader.cachedCount >= 12",
                           timeout=60_000)
    streams = [u for u in api_requests if "/stream?" in u]
    singles = [u for u in api_requests if "/slices/" in u]
    assert streams and len(singles) <= 2, f"streams {streams}, single slices {singles}"
    meta = series_meta(page, alice, uid)
    assert meta["num_slices"] == 12 and meta["units"] == "HU" and meta["mpr"]["available"]
    expect(pane(page).locator(".vre-readout-slice")).to_contain_text("/ 12")
    expect(pane(page).locator(".vre-marker-left")).to_have_text("R")
    expect(pane(page).locator(".vre-marker-right")).to_have_text("L")
    expect(pane(page).locator(".vre-marker-top")).to_have_text("A")
    expect(pane(page).locator(".vre-marker-bottom")).to_have_text("P")
    # the file's own window first (WindowCenter/Width -600/1500)
    expect(pane(page).locator(".vre-readout-wl")).to_have_text("W 1500  L -600")

    # Scroll: wheel, then keys.
    canvas = pane(page).locator("canvas")
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    start = index_of(page)
    page.mouse.wheel(0, 120)
    expect(pane(page)).to_have_attribute("data-index", str(start + 1))
    page.mouse.wheel(0, -120)
    page.mouse.wheel(0, -120)
    expect(pane(page)).to_have_attribute("data-index", str(start - 1))
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    expect(pane(page)).to_have_attribute("data-index", str(start + 1))
    page.keyboard.press("Home")
    expect(pane(page)).to_have_attribute("data-index", "0")
    expect(pane(page).locator(".vre-readout-slice")).to_have_text("Slice 1 / 12")
    page.keyboard.press("PageDown")
    expect(pane(page)).to_have_attribute("data-index", "1")
    page.keyboard.press("End")
    expect(pane(page).locator("canvas")).to_have_attribute("data-index", "11")
    loc = meta["slices"][11]["location"]
    expect(pane(page).locator(".vre-readout-location")).to_have_text(f"Loc {loc:.2f} mm")

    # Window/level: a preset, then a right-drag; the readout follows.
    page.locator(".vre-preset").select_option("soft")
    expect(pane(page).locator(".vre-readout-wl")).to_have_text("W 400  L 40")
    page.locator(".vre-preset").select_option("bone")
    expect(pane(page).locator(".vre-readout-wl")).to_have_text("W 2500  L 480")
    page.locator(".vre-preset").select_option("lung")
    expect(pane(page).locator(".vre-readout-wl")).to_have_text("W 1500  L -600")
    page.mouse.move(box["x"] + 100, box["y"] + 100)
    page.mouse.down(button="right")
    page.mouse.move(box["x"] + 160, box["y"] + 130, steps=6)
    page.mouse.up(button="right")
    after = wl_text(page)
    w, l = (int(v) for v in re.findall(r"-?\d+", after))
    assert w > 1500 and l > -600, after  # right: wider, down: higher level
    expect(page.locator(".vre-preset")).to_have_value("custom")
    page.locator(".vre-preset").select_option("lung")

    # HU under the mouse: the nodule centre and the landmarks, located from the API's geometry.
    k, r, c = voxel_of(meta, patient.lesion_center)
    show_index(page, "native", k)
    readout = hover_pixel(page, "native", r, c)
    assert readout.endswith(f"{HU_NODULE} HU"), readout
    expect(pane(page).locator(".vre-readout-value")).to_have_attribute("data-value", str(HU_NODULE))
    pos = pane(page).locator(".vre-readout-pos").inner_text()
    x, y, z = (float(v) for v in re.findall(r"-?\d+\.\d", pos))
    assert (x, y, z) == pytest.approx(patient.lesion_center, abs=0.06), pos
    dismiss_toasts(page)
    page.screenshot(path=str(ARTIFACTS / "viewer-native.png"))
    for name, (lx, ly, hu) in CT_LANDMARKS.items():
        k2, r2, c2 = voxel_of(meta, (lx, ly, Z_CENTER_MM))
        show_index(page, "native", k2)
        readout = hover_pixel(page, "native", r2, c2)
        assert readout.endswith(f"{hu} HU"), (name, readout)
    # back on the nodule for the README screenshot
    show_index(page, "native", k)
    hover_pixel(page, "native", r, c)
    dismiss_toasts(page)
    page.screenshot(path=str(ARTIFACTS / "viewer.png"))
    (ROOT / "docs").mkdir(exist_ok=True)
    shutil.copy(ARTIFACTS / "viewer.png", ROOT / "docs" / "screenshot-viewer.png")

    # The tag panel of the current instance, searchable.
    page.locator(".vre-tags-toggle").click()
    tags = page.locator(".vre-Tags")
    expect(tags.locator('tr[data-keyword="PatientID"]')).to_contain_text(patient.patient_id)
    tags.locator(".vre-tags-search").fill("window")
    expect(tags.locator('tr[data-keyword="WindowWidth"]')).to_contain_text("1500")
    expect(tags.locator('tr[data-keyword="PatientID"]')).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "viewer-tags.png"))
    page.locator(".vre-tags-toggle").click()

    # MPR: axial + coronal + sagittal, with the right aspect ratio and the HU readout.
    page.locator(".vre-layout").select_option("mpr")
    for stack in ("axial", "coronal", "sagittal"):
        expect(pane(page, stack).locator("canvas")).to_have_attribute("data-index", re.compile(r"\d+"), timeout=60_000)
        expect(pane(page, stack)).to_be_visible()
    expect(pane(page, "coronal").locator(".vre-marker-top")).to_have_text("H")
    expect(pane(page, "coronal").locator(".vre-marker-left")).to_have_text("R")
    expect(pane(page, "sagittal").locator(".vre-marker-left")).to_have_text("A")
    expect(pane(page, "sagittal").locator(".vre-marker-bottom")).to_have_text("F")
    for stack in ("coronal", "sagittal"):
        g = pane(page, stack).locator("canvas").evaluate("c => ({...c.dataset})")
        row_mm, col_mm = meta["mpr"]["planes"][stack]["pixel_spacing"]
        assert float(g["sy"]) / float(g["sx"]) == pytest.approx(row_mm / col_mm, rel=1e-3), (stack, g)
        assert int(g["rows"]) == 12
    nz = meta["mpr"]["planes"]["axial"]["count"]
    show_index(page, "coronal", r)  # coronal i = 0 is the most anterior: the axial row
    readout = hover_pixel(page, "coronal", nz - 1 - k, c)  # head up: axial slice 0 is the bottom row
    assert readout.endswith(f"{HU_NODULE} HU"), readout
    show_index(page, "sagittal", c)  # sagittal i = 0 is the patient's right: the axial column
    readout = hover_pixel(page, "sagittal", nz - 1 - k, r)
    assert readout.endswith(f"{HU_NODULE} HU"), readout
    dismiss_toasts(page)
    page.screenshot(path=str(ARTIFACTS / "viewer-mpr.png"))

    stats = painted_meta(page)
    print(f"viewer: metadata {stats['meta']:.0f} ms, first paint {stats['paint']:.0f} ms after open; "
          f"render p50 {np.median(stats['render']):.2f} ms over {len(stats['render'])} frames")
    assert not foreign, f"requests to other hosts: {foreign}"


# --- 2. "Insert code cell" ----------------------------------------------------------------------
def test_insert_code_cell_loads_the_series_as_a_volume(lab, alice, cohort):
    page = lab
    foreign = watch_requests(page)
    page.locator('.jp-Launcher .jp-LauncherCard[data-category="Notebook"]').first.click()
    expect(page.locator(".jp-NotebookPanel")).to_be_visible(timeout=60_000)
    expect(page.locator("#jp-main-statusbar")).to_contain_text(
        re.compile(r"Python 3 \(ipykernel\) \| Idle"), timeout=LAB_TIMEOUT_MS)
    show_datasets(page)
    patient = cohort.patients[1]
    row = series_row(page, patient.patient_id)
    meta = series_meta(page, alice, row.get_attribute("data-series-uid"))
    row.locator(".vre-act-code").click()
    cell = page.locator(".jp-Notebook .jp-Cell.jp-mod-active")
    expect(cell.locator(".cm-content")).to_contain_text("load_dicom_series")
    page.keyboard.press("Shift+Enter")
    output = page.locator(".jp-Notebook .jp-Cell").first.locator(".jp-OutputArea-output")
    try:
        expect(output).to_contain_text("shape", timeout=30_000)
    except AssertionError:  # the first run raced the kernel's websocket: run it once more
        page.locator(".jp-Notebook .jp-Cell").first.locator(".jp-InputPrompt").click()
        page.keyboard.press("Control+Enter")
    expect(output).to_contain_text("shape", timeout=60_000)
    row_mm, col_mm = meta["pixel_spacing"]
    spacing = (round(meta["slice_spacing"], 4), round(row_mm, 4), round(col_mm, 4))
    expect(output).to_contain_text(f"shape (12, 64, 64) int16 spacing (z, y, x) mm {spacing}")
    dismiss_toasts(page)
    page.screenshot(path=str(ARTIFACTS / "viewer-code-cell.png"))
    assert not foreign, f"requests to other hosts: {foreign}"


# --- 3. "Open With" a .dcm file, and no download actions for dataset paths -------------------------
def test_open_with_dicom_viewer_and_download_hidden_for_dataset_paths(lab, alice, cohort):
    page = lab
    foreign = watch_requests(page)
    patient = cohort.patients[0]
    # a file of the home, where downloads stay available (the project's mode is "all")
    expect(page.locator("body[data-vre-downloads='all']")).to_have_count(1)
    for name, text in (("notes.txt", "my notes\n"), ("not-an-image.dcm", "exported from the RIS, not DICOM\n")):
        r = alice.server_api(PROJECT, "PUT", f"/contents/{name}", json={"type": "file", "format": "text", "content": text})
        assert r.status_code in (200, 201), r.text
    if not page.locator(".jp-FileBrowser").is_visible():
        page.locator('.jp-SideBar [data-id="filebrowser"]').first.click()
    listing = page.locator(".jp-FileBrowser .jp-DirListing-content")
    crumbs = page.locator(".jp-FileBrowser .jp-BreadCrumbs")
    page.locator(".jp-FileBrowser .jp-BreadCrumbs-home").click()
    download = page.locator('.lm-Menu-item[data-command="filebrowser:download"]')
    download_link = page.locator('.lm-Menu-item[data-command="filebrowser:copy-download-link"]')
    new_tab = page.locator('.lm-Menu-item[data-command="filebrowser:open-browser-tab"]')

    listing.locator('.jp-DirListing-item:has-text("notes.txt")').click(button="right")
    expect(download).to_be_visible()
    expect(download_link).to_be_visible()
    page.keyboard.press("Escape")

    # a .dcm that is no DICOM: the viewer says why instead of showing an empty panel
    listing.locator('.jp-DirListing-item:has-text("not-an-image.dcm")').dblclick()
    error = page.locator(".vre-ViewerDocument .vre-Viewer-errorBox")
    expect(error).to_be_visible(timeout=30_000)
    expect(error).to_contain_text("422")
    expect(error.locator(".vre-Viewer-errorMessage")).not_to_be_empty()
    page.screenshot(path=str(ARTIFACTS / "viewer-error.png"))
    page.locator('.lm-TabBar-tab:has-text("not-an-image.dcm") .lm-TabBar-tabCloseIcon').click()

    # into the dataset, through the data/ link
    parts = ["data", SLUG, *patient.series_dir.relative_to(cohort.root).parts]
    for name in parts[:2]:
        listing.locator(f'.jp-DirListing-item[data-isdir="true"]:has-text("{name}")').first.dblclick()
        expect(crumbs).to_contain_text(name)
    listing.locator('.jp-DirListing-item:has-text("clinical.csv")').click(button="right")
    expect(page.locator(".lm-Menu-item", has_text="Copy Path").first).to_be_visible()
    expect(download).to_be_hidden()
    expect(download_link).to_be_hidden()
    expect(new_tab).to_be_hidden()
    page.keyboard.press("Escape")
    for name in parts[2:]:
        listing.locator(f'.jp-DirListing-item[data-isdir="true"]:has-text("{name}")').first.dblclick()
        expect(crumbs).to_contain_text(name)
    dcm = listing.locator('.jp-DirListing-item:has-text("IMG0001.dcm")')
    dcm.click(button="right")
    expect(page.locator('.lm-Menu-item[data-command="vre:open-selected-in-viewer"]')).to_be_visible()
    expect(download).to_be_hidden()
    expect(download_link).to_be_hidden()
    page.locator(".lm-Menu-item", has_text="Open With").first.hover()
    open_with = page.locator(".lm-Menu").nth(1).locator('.lm-Menu-item[data-command="filebrowser:open"]')
    expect(open_with.first).to_have_text(re.compile(r"^DICOM Viewer"))  # the default for .dcm: first
    page.screenshot(path=str(ARTIFACTS / "viewer-download-hidden.png"))  # the menu, without "Download"
    page.keyboard.press("Escape")
    page.keyboard.press("Escape")

    # Open it (double click: the DICOM viewer is the default for .dcm) and read a value.
    dcm.dblclick()
    doc = page.locator('.vre-ViewerDocument .vre-Viewer[data-painted="true"]')
    expect(doc).to_be_visible(timeout=60_000)
    expect(page.locator('.lm-TabBar-tab:has-text("IMG0001.dcm")')).to_be_visible()
    expect(doc.locator(".vre-readout-slice")).to_have_text("Slice 1 / 1")
    uid = page.request.get(f"{alice.server_url(PROJECT)}/vre/api/datasets/{SLUG}/series",
                           params={"patient": patient.patient_id}).json()["items"][0]["series_uid"]
    meta = series_meta(page, alice, uid)
    # the soft-tissue landmark holds on every slice, at the same pixel of each
    _, r, c = voxel_of(meta, (*CT_LANDMARKS["soft_tissue"][:2], Z_CENTER_MM))
    readout = hover_pixel(page, "native", r, c)
    assert readout.endswith(f"{CT_LANDMARKS['soft_tissue'][2]} HU"), readout
    # File > Download is hidden while a dataset file is shown
    page.locator('.lm-MenuBar-item:has-text("File")').click()
    expect(page.locator('.lm-Menu-item[data-command="docmanager:download"]')).to_be_hidden()
    page.keyboard.press("Escape")
    assert not foreign, f"requests to other hosts: {foreign}"


# --- 4. with the project's downloads "none" (the default), no download action anywhere ---------------
def test_no_download_actions_when_the_project_allows_none(sqlite_hub, browser_page):
    bob = sqlite_hub.client("bob")
    bob.start("prostate-ai")
    try:
        r = bob.server_api("prostate-ai", "PUT", "/contents/notes.txt",
                           json={"type": "file", "format": "text", "content": "my notes\n"})
        assert r.status_code in (200, 201), r.text
        page = browser_page
        login_cookies(page, sqlite_hub, "bob")
        page.goto(f"{bob.server_url('prostate-ai')}/lab?reset")
        expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=LAB_TIMEOUT_MS)
        expect(page.locator("body[data-vre-downloads='none']")).to_have_count(1, timeout=30_000)
        if not page.locator(".jp-FileBrowser").is_visible():
            page.locator('.jp-SideBar [data-id="filebrowser"]').first.click()
        listing = page.locator(".jp-FileBrowser .jp-DirListing-content")
        listing.locator('.jp-DirListing-item:has-text("notes.txt")').click(button="right")
        expect(page.locator(".lm-Menu-item", has_text="Copy Path").first).to_be_visible()
        for command in ("filebrowser:download", "filebrowser:copy-download-link", "filebrowser:open-browser-tab"):
            expect(page.locator(f'.lm-Menu-item[data-command="{command}"]')).to_be_hidden()
        page.keyboard.press("Escape")
        # and the layer refuses the download even when asked directly
        r = page.request.get(f"{bob.server_url('prostate-ai')}/files/notes.txt?download=1")
        assert r.status == 403 and r.json()["reason"] == "download_refused"
    finally:
        bob.stop("prostate-ai")
