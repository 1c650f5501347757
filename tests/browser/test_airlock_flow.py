"""The airlock end to end in real Chromium: bob (project prostate-ai) writes a CSV, a PNG and a
notebook in his real session, asks for their export from the Lab (the Export requests panel, and
"Request export" in the file browser), checks and submits; two output checkers review in their own
browsers on the VRE service's pages (blinded: the second does not see the first's decisions; then
consolidated, all decisions shown) with inline previews, and release; bob downloads the zip from the
panel and its checksums match the originals; the audit trail has every step in order; bob gets 403
on the checker page of his own request, a stranger 403 on the list and 404 on the request. Every request of every page is watched: none leaves this
machine. Screenshots: docs/screenshot-airlock-review.png, docs/screenshot-airlock-lab.png.

The extension must be built and installed first: ``bash extensions/build-labextension.sh``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import struct
import zipfile
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hubclient import HubClient
from labpage import dismiss_toasts

pytestmark = [pytest.mark.integration, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
PROJECT = "prostate-ai"
CHECKERS = ("checker-ann", "checker-ben")
LAB_TIMEOUT_MS = 90_000
LOCAL = re.compile(r"^(?:https?|wss?)://(?:127\.0\.0\.1|localhost)(?::\d+)?(?:/|$)|^(?:data|blob|about):")
TABLE = "case,psa,lesion\n1,4.2,yes\n2,7.9,no\n3,5.1,yes\n"


def png(width: int, height: int) -> bytes:
    """A red RGB PNG of this size (the preview's image must have a size to check)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\0" + b"\xc0\x20\x20" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


PNG = png(16, 16)
#: an SVG that would run a script and fetch a foreign image if it were opened as a document
SVG = ('<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="40" height="20">'
       '<script>parent.document.title = "pwned"</script><rect width="40" height="20" fill="#36c"/>'
       '<image href="https://example.org/tracker.png" width="1" height="1"/></svg>')
NOTEBOOK = {"cells": [{"cell_type": "code", "execution_count": 1, "metadata": {}, "id": "c1",
                       "source": "print('AUC 0.91')",
                       "outputs": [{"output_type": "stream", "name": "stdout", "text": "AUC 0.91\n"}]}],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}

expect = pytest.importorskip("playwright.sync_api").expect


# --- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def people(sqlite_hub):
    """bob's API client; two output checkers (accounts made with the CLI, checker flag on)."""
    for name in CHECKERS:
        if name not in sqlite_hub.passwords:
            sqlite_hub.account(name)
            sqlite_hub.vre("user", "set-checker", name, "on")
    sqlite_hub.vre("project", "set-airlock-rules", PROJECT, "--reviews", "2")
    bob = sqlite_hub.client("bob")
    yield bob
    for log in Path(sqlite_hub.env["VRE_RUN_DIR"]).glob("sessions/*bob*/server.log"):
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(log, ARTIFACTS / f"airlock-session-{log.parent.name}.log")
    if bob.server_state(PROJECT) is not None:
        bob.stop(PROJECT)
    home = sqlite_hub.state / "projects" / PROJECT / "homes" / "bob"
    shutil.rmtree(home / ".jupyter" / "lab" / "workspaces", ignore_errors=True)


def watch(page, foreign: list[str]) -> None:
    """Record every request of ``page`` to a host other than this machine (there must be none)."""
    page.on("request", lambda r: None if LOCAL.match(r.url) else foreign.append(r.url))
    page.on("websocket", lambda ws: None if LOCAL.match(ws.url) else foreign.append(ws.url))


def login_cookies(context, hub, user: str) -> None:
    client = HubClient(hub.url, user)
    client.login(hub.passwords[user])
    assert client.logged_in(), f"login as {user} failed"
    context.add_cookies([{"name": c.name, "value": c.value, "url": f"{hub.url}{c.path or '/'}"}
                         for c in client.http.cookies])


def new_page(browser, hub, user: str, foreign: list[str]):
    """A fresh browser context logged in to the hub as ``user`` (no request leaves the machine)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, device_scale_factor=1, accept_downloads=True)
    context.set_default_timeout(30_000)
    context.route(re.compile(r"^(?:https?|wss?)://(?!(?:127\.0\.0\.1|localhost)(?::\d+)?(?:/|$))"),
                  lambda route: route.abort())
    login_cookies(context, hub, user)
    page = context.new_page()
    watch(page, foreign)
    return page


def put(bob, path: str, model: dict) -> None:
    r = bob.server_api(PROJECT, "PUT", f"/contents/{path}", json=model)
    assert r.status_code in (200, 201), f"writing {path}: {r.status_code} {r.text}"


def path(response) -> str:
    """The URL path of a response (Lab's no-store requests carry a cache-busting query)."""
    return urlsplit(response.url).path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def in_order(actions: list[str], expected: list[str]) -> bool:
    it = iter(actions)
    return all(any(a == e for a in it) for e in expected)


def file_browser_item(page, name: str):
    return page.locator(f'.jp-DirListing-item[title*="{name}"]').first


# --- the test ----------------------------------------------------------------------------------
def test_export_from_lab_review_in_browser_release_download(sqlite_hub, people, browser, browser_page):
    hub, bob = sqlite_hub, people
    foreign: list[str] = []
    bob.start(PROJECT)
    # bob's results, written in his real session (contents API)
    put(bob, "project", {"type": "directory"})
    put(bob, "project/results", {"type": "directory"})
    put(bob, "project/results/table.csv", {"type": "file", "format": "text", "content": TABLE})
    put(bob, "project/results/roc.png", {"type": "file", "format": "base64", "content": base64.b64encode(PNG).decode()})
    put(bob, "project/results/figure.svg", {"type": "file", "format": "text", "content": SVG})
    put(bob, "analysis.ipynb", {"type": "notebook", "format": "json", "content": NOTEBOOK})

    # --- bob, in his Lab --------------------------------------------------------------------------
    lab = browser_page
    watch(lab, foreign)
    login_cookies(lab.context, hub, "bob")
    errors: list[str] = []
    lab.on("pageerror", lambda e: errors.append(str(e)))
    lab.goto(f"{bob.server_url(PROJECT)}/lab?reset")
    expect(lab.locator("#jp-main-dock-panel")).to_be_visible(timeout=LAB_TIMEOUT_MS)
    tab = lab.locator('.jp-SideBar [data-id="vre-airlock"]').first
    try:
        expect(tab).to_be_visible(timeout=LAB_TIMEOUT_MS)
    except AssertionError as e:
        raise AssertionError(f"no Export requests tab; page errors: {errors[-10:]}") from e
    dismiss_toasts(lab, wait_ms=3_000)
    tab.click()
    panel = lab.locator(".vre-Airlock")
    expect(panel).to_be_visible()

    # a new request from the panel's form
    panel.get_by_role("button", name="New export request").click()
    form = panel.locator("form.vre-AirlockForm")
    form.get_by_label("Title").fill("Lesion detection results")
    form.get_by_label("Justification").fill("Aggregate results for the paper; no patient-level identifiers.")
    with lab.expect_response(lambda r: r.request.method == "POST" and path(r).endswith("/vre/api/airlock/requests")) as ans:
        form.get_by_role("button", name="Create request").click()
    assert ans.value.status == 201, ans.value.text()
    rid = ans.value.json()["id"]
    details = panel.locator(f'.vre-AirlockDetails[data-request-id="{rid}"]')
    expect(details).to_be_visible()
    expect(details).to_have_attribute("data-state", "draft")

    # the notebook: "Request export" in the file browser, into this draft
    lab.locator('.jp-SideBar [data-id="filebrowser"]').first.click()
    item = file_browser_item(lab, "analysis.ipynb")
    expect(item).to_be_visible()
    item.click(button="right")
    lab.locator('.lm-Menu-item[data-command="vre:request-export"]').click()
    dialog = lab.locator(".jp-Dialog")
    expect(dialog.get_by_label("Export request", exact=True)).to_have_value(str(rid))
    dialog.get_by_label("Its description").fill("Evaluation notebook with its outputs")
    with lab.expect_response(lambda r: r.request.method == "POST" and path(r).endswith(f"/airlock/requests/{rid}/files")) as ans:
        dialog.get_by_role("button", name="Add to request").click()
    assert ans.value.status == 201, ans.value.text()
    expect(panel).to_be_visible()
    expect(details.locator('.vre-AirlockFile[data-name="analysis.ipynb"]')).to_be_visible()

    # the CSV and the PNG: the panel's "add" field (paths as the file browser gives them)
    for where, description in (("project/results/table.csv", "Per-case PSA and lesion call"),
                              ("project/results/roc.png", "ROC curve"),
                              ("project/results/figure.svg", "Overview figure")):
        details.get_by_label("Add a file or folder (path as in the file browser)").fill(where)
        details.get_by_label("Its description").fill(description)
        with lab.expect_response(lambda r: r.request.method == "POST" and path(r).endswith("/files")) as ans:
            details.get_by_role("button", name=f"Add the file or folder to request {rid}").click()
        assert ans.value.status == 201, ans.value.text()
        expect(details.locator(f'.vre-AirlockFile[data-name="{where.rsplit("/", 1)[-1]}"]')).to_be_visible()
    # a description edited in place
    desc = details.get_by_label("Description of roc.png")
    expect(desc).to_have_value("ROC curve")
    with lab.expect_response(lambda r: r.request.method == "PATCH") as ans:
        desc.fill("ROC curve of the validation cohort")
        desc.press("Tab")
    assert ans.value.status == 200, ans.value.text()

    # a bad path: the API's message, in the panel
    details.get_by_label("Add a file or folder (path as in the file browser)").fill("project/results/missing.csv")
    details.get_by_role("button", name=f"Add the file or folder to request {rid}").click()
    expect(details.locator(".vre-AirlockError")).to_contain_text("missing.csv")

    # check, then submit
    details.get_by_role("button", name=re.compile(f"^Check request {rid}")).click()
    expect(details.locator(".vre-AirlockCheck")).to_contain_text("no problems")
    with lab.expect_response(lambda r: path(r).endswith(f"/requests/{rid}/submit")) as ans:
        details.get_by_role("button", name=re.compile(f"^Submit request {rid}")).click()
    assert ans.value.status == 200, ans.value.text()
    submitted = ans.value.json()
    expect(details).to_have_attribute("data-state", "submitted")
    files = {f["name"]: f for f in submitted["files"]}
    assert set(files) == {"analysis.ipynb", "table.csv", "roc.png", "figure.svg"}
    assert files["table.csv"]["sha256"] == sha(TABLE.encode()) and files["roc.png"]["sha256"] == sha(PNG)
    expect(details.locator(".vre-AirlockFile-sha").first).to_contain_text("SHA-256")
    expect(panel.locator(f'.vre-AirlockRow[data-request-id="{rid}"] .vre-AirlockBadge')).to_have_text("submitted")

    # --- the checkers ----------------------------------------------------------------------------
    review_url = f"{hub.url}/services/vre/airlock/{rid}"
    pages = {name: new_page(browser, hub, name, foreign) for name in CHECKERS}
    try:
        first, second = (pages[n] for n in CHECKERS)
        # checker 1: the list, then the request; previews inline
        first.goto(f"{hub.url}/services/vre/airlock")
        expect(first.locator("h1")).to_have_text("Airlock: export requests")
        row = first.locator(f'#requests tr[data-request-id="{rid}"]')
        expect(row).to_contain_text("Lesion detection results")
        expect(row).to_contain_text("bob")
        row.get_by_role("link").click()
        first.wait_for_url(review_url)
        check_previews(first)
        expect(first.locator("#req-phase")).to_have_attribute("data-phase", "independent")
        decide(first, {"table.csv": ("approve", ""), "roc.png": ("approve", "axis labels only"),
                       "analysis.ipynb": ("approve", ""), "figure.svg": ("approve", "")})
        expect(first.locator("#req-phase")).to_contain_text("1 of 2 reviews complete")
        expect(first.locator(".file-card .reviews li")).to_have_count(4)  # their own decisions only
        expect(first.locator("#request-actions")).to_be_hidden()

        # checker 2: blinded, sees nothing of checker 1's decisions
        second.goto(review_url)
        check_previews(second)
        expect(second.locator("#req-phase")).to_have_attribute("data-phase", "independent")
        expect(second.locator(".file-card .reviews li")).to_have_count(0)
        assert "checker-ann" not in second.locator("#files").inner_text()
        for card in second.locator(".file-card").all():
            expect(card.locator(".card-header .badge")).to_have_attribute("data-status", "pending")
        decide(second, {"table.csv": ("approve", ""), "roc.png": ("approve", ""), "analysis.ipynb": ("approve", ""),
                        "figure.svg": ("approve", "")})
        # consolidation: every decision shown, the request can be decided
        expect(second.locator("#req-phase")).to_have_attribute("data-phase", "consolidation")
        expect(second.locator(".file-card .reviews li")).to_have_count(8)
        expect(second.locator('.file-card .reviews li[data-reviewer="checker-ann"]')).to_have_count(4)
        expect(second.locator("#files")).to_contain_text("axis labels only")
        expect(second.locator("#act-release")).to_be_visible()
        first.reload()
        expect(first.locator(".file-card .reviews li")).to_have_count(8)
        check_previews(first)
        # a tall viewport rather than full_page: full-page captures leave the sandboxed frame blank
        first.set_viewport_size({"width": 1400, "height": 2000})
        first.evaluate("window.scrollTo(0, 0)")
        first.wait_for_timeout(500)
        ARTIFACTS.mkdir(exist_ok=True)
        first.screenshot(path=str(ARTIFACTS / "airlock-review.png"))
        shutil.copy(ARTIFACTS / "airlock-review.png", ROOT / "docs" / "screenshot-airlock-review.png")

        second.locator("#request-comment").fill("Aggregates only: safe to release.")
        with second.expect_response(lambda r: path(r).endswith(f"/requests/{rid}/release")) as ans:
            second.locator("#act-release").click()
        assert ans.value.status == 200, ans.value.text()
        expect(second.locator("body")).to_have_attribute("data-state", "released")
        expect(second.locator("#request-actions")).to_be_hidden()
    finally:
        for p in pages.values():
            p.context.close()

    # --- bob: released, downloads the zip from the panel ----------------------------------------
    panel.get_by_role("button", name="Refresh the export requests").click()
    expect(details).to_have_attribute("data-state", "released", timeout=30_000)
    reviews = details.locator(".vre-AirlockReviews").first
    expect(reviews).to_contain_text("checker-ben approved")
    expect(reviews).to_contain_text("roc.png: checker-ann approved — “axis labels only”")
    expect(details.locator(".vre-AirlockComments")).to_contain_text("safe to release")
    zip_link = details.get_by_role("link", name="Download all (zip)")
    expect(zip_link).to_be_visible()
    dismiss_toasts(lab)
    lab.mouse.move(1390, 890)
    ARTIFACTS.mkdir(exist_ok=True)
    lab.screenshot(path=str(ARTIFACTS / "airlock-lab.png"), clip={"x": 0, "y": 0, "width": 760, "height": 900})
    shutil.copy(ARTIFACTS / "airlock-lab.png", ROOT / "docs" / "screenshot-airlock-lab.png")
    with lab.expect_download(timeout=60_000) as dl:
        zip_link.click()
    saved = ARTIFACTS / f"airlock-{rid}.zip"
    dl.value.save_as(str(saved))
    assert dl.value.failure() is None
    z = zipfile.ZipFile(io.BytesIO(saved.read_bytes()))
    sums = dict(line.split("  ", 1)[::-1] for line in z.read("SHA256SUMS").decode().splitlines())
    assert set(sums) == {"table.csv", "roc.png", "analysis.ipynb", "figure.svg"}, sums
    for name, digest in sums.items():
        assert sha(z.read(name)) == digest == files[name]["sha256"], name
    assert z.read("table.csv").decode() == TABLE and z.read("roc.png") == PNG
    # the originals, as they are in bob's home and the project workspace on the host
    base = hub.state / "projects" / PROJECT
    originals = {"table.csv": base / "workspace" / "results" / "table.csv",
                 "roc.png": base / "workspace" / "results" / "roc.png",
                 "figure.svg": base / "workspace" / "results" / "figure.svg",
                 "analysis.ipynb": base / "homes" / "bob" / "analysis.ipynb"}
    for name, original in originals.items():
        assert sums[name] == sha(original.read_bytes()), name
    assert "AUC 0.91" in "".join(json.loads(z.read("analysis.ipynb"))["cells"][0]["outputs"][0]["text"])
    assert "release-record.json" in z.namelist() and "release-record.json.sig" in z.namelist()
    # the checksums shown in the panel are those of the zip
    for name, f in files.items():
        expect(details.locator(f'.vre-AirlockFile[data-name="{name}"] .vre-AirlockFile-sha')).to_contain_text(f["sha256"])
    # one file on its own
    with lab.expect_download(timeout=60_000) as dl:
        details.get_by_role("link", name="Download roc.png").click()
    assert Path(dl.value.path()).read_bytes() == PNG

    # --- bob on the checker page of his own request: 403, with the reason ---------------------------
    own = lab.context.new_page()
    watch(own, foreign)
    answer = own.goto(review_url)
    assert answer.status == 403, answer.status
    expect(own.locator("body")).to_contain_text("author")
    own.close()
    # someone who is neither a checker nor a member: no list (403), no request (404)
    stranger = new_page(browser, hub, "alice", foreign)
    try:
        assert stranger.goto(f"{hub.url}/services/vre/airlock").status == 403
        assert stranger.goto(review_url).status == 404
    finally:
        stranger.context.close()

    # --- the audit trail: every step, in order ------------------------------------------------------
    events = [e for e in json.loads(hub.vre("audit", "query", "--action", "airlock.", "--json", "--limit", "2000").stdout)
              if e["target"] == f"airlock/{rid}"]
    ok = [(e["actor"], e["action"]) for e in events if e["outcome"] == "ok"]
    actions = [a for _, a in ok]
    assert in_order(actions, ["airlock.create", "airlock.update", "airlock.check", "airlock.submit",
                              "airlock.file_view", "airlock.review_start", "airlock.review", "airlock.consolidate",
                              "airlock.approve", "airlock.release", "airlock.download"]), actions
    assert actions.count("airlock.review") == 8, actions
    assert {a for a, act in ok if act == "airlock.review"} == set(CHECKERS)
    assert {a for a, act in ok if act == "airlock.file_view"} == set(CHECKERS)
    # each page load views each file once; recording decisions or releasing loads nothing again
    views = [a for a, act in ok if act == "airlock.file_view"]
    assert views.count("checker-ben") == 4 and views.count("checker-ann") == 8, views
    assert [a for a, act in ok if act in ("airlock.create", "airlock.submit", "airlock.download")] == ["bob"] * 4
    submit = next(e for e in events if e["action"] == "airlock.submit" and e["outcome"] == "ok")
    assert {f["sha256"] for f in submit["details"]["files"]} == {f["sha256"] for f in files.values()}
    assert not errors, errors
    assert not foreign, f"requests left this machine: {foreign}"


def check_previews(page) -> None:
    """Every file's preview is inline: the CSV as a table, the PNG as an image, the notebook rendered."""
    expect(page.locator("body")).to_have_attribute("data-airlock-loading", "false")
    table = page.locator('.file-card[data-file-name="table.csv"] table.csv-preview')
    expect(table.locator("thead th")).to_have_text(["case", "psa", "lesion"])
    expect(table.locator("tbody tr")).to_have_count(3)
    img = page.locator('.file-card[data-file-name="roc.png"] .preview img')
    expect(img).to_have_attribute("alt", re.compile("Preview of roc.png"))
    page.wait_for_function("img => img.complete && img.naturalWidth === 16", arg=img.element_handle())
    frame = page.frame_locator('.file-card[data-file-name="analysis.ipynb"] iframe')
    expect(frame.locator("body")).to_contain_text("AUC 0.91")
    expect(page.locator('.file-card[data-file-name="analysis.ipynb"] iframe')).to_have_attribute("sandbox", "")
    # the SVG: an image of a blob (no script runs, nothing is fetched) and its source as text
    svg = page.locator('.file-card[data-file-name="figure.svg"] .preview img')
    expect(svg).to_have_attribute("src", re.compile("^blob:"))
    page.wait_for_function("img => img.complete && img.naturalWidth === 40", arg=svg.element_handle())
    expect(page.locator('.file-card[data-file-name="figure.svg"] details pre')).to_contain_text("<script>", use_inner_text=False)
    assert page.title() != "pwned"


def decide(page, decisions: dict[str, tuple[str, str]]) -> None:
    label = {"approve": "Approve", "changes": "Request changes", "reject": "Reject"}
    for name, (decision, comment) in decisions.items():
        card = page.locator(f'.file-card[data-file-name="{name}"]')
        card.get_by_role("radio", name=label[decision], exact=True).check()
        if comment:
            card.get_by_label(f"Comment on {name}").fill(comment)
    with page.expect_response(lambda r: path(r).endswith("/reviews")) as ans:
        page.get_by_role("button", name="Record my decisions").click()
    assert ans.value.status == 201, ans.value.text()
    expect(page.locator("body")).to_have_attribute("data-airlock-loading", "false")


def test_changes_requested_update_and_resubmit_from_the_panel(sqlite_hub, people, browser_page):
    """A request returned with changes requested: bob reads the comments in the panel, fixes the
    file in his session, freezes it again ("Update": a new version, its reviews start afresh),
    resubmits, and then withdraws it. The request is set up with the CLI, acting as each person."""
    hub, bob = sqlite_hub, people
    if bob.server_state(PROJECT) is None:
        bob.start(PROJECT)
    put(bob, "project", {"type": "directory"})
    put(bob, "project/results", {"type": "directory"})
    put(bob, "project/results/summary.csv", {"type": "file", "format": "text", "content": "group,n\na,3\nb,12\n"})
    req = json.loads(hub.vre("airlock", "create", "--as", "bob", "--project", PROJECT, "--title", "Group sizes",
                             "--description", "members per group", "project/results/summary.csv").stdout)
    rid = req["id"]
    hub.vre("airlock", "submit", str(rid), "--as", "bob")
    for checker, comment in zip(CHECKERS, ("n=3 is identifying", "suppress counts below 10")):
        hub.vre("airlock", "review", str(rid), "--as", checker, "--decision", "changes", "--comment", comment)
    hub.vre("airlock", "return", str(rid), "--as", CHECKERS[1], "--comment", "Suppress small counts, then resubmit.")
    fixed = "group,n\na,<10\nb,12\n"
    put(bob, "project/results/summary.csv", {"type": "file", "format": "text", "content": fixed})

    lab = browser_page
    foreign: list[str] = []
    watch(lab, foreign)
    login_cookies(lab.context, hub, "bob")
    lab.goto(f"{bob.server_url(PROJECT)}/lab?reset")
    tab = lab.locator('.jp-SideBar [data-id="vre-airlock"]').first
    expect(tab).to_be_visible(timeout=LAB_TIMEOUT_MS)
    dismiss_toasts(lab, wait_ms=3_000)
    tab.click()
    panel = lab.locator(".vre-Airlock")
    row = panel.locator(f'.vre-AirlockRow[data-request-id="{rid}"]')
    expect(row.locator(".vre-AirlockBadge")).to_have_text("changes requested")
    row.get_by_role("button").click()
    details = panel.locator(f'.vre-AirlockDetails[data-request-id="{rid}"]')
    expect(details).to_have_attribute("data-state", "changes_requested")
    reviews = details.locator(".vre-AirlockReviews").first
    expect(reviews).to_contain_text("summary.csv: checker-ann changes requested — “n=3 is identifying”")
    expect(details.locator(".vre-AirlockComments")).to_contain_text("Suppress small counts, then resubmit.")
    item = details.locator('.vre-AirlockFile[data-name="summary.csv"]')
    expect(item.locator(".vre-AirlockBadge")).to_have_attribute("data-status", "changes")

    with lab.expect_response(lambda r: path(r).endswith("/update")) as ans:
        item.get_by_role("button", name=re.compile("^Freeze summary.csv again")).click()
    assert ans.value.status == 200, ans.value.text()
    updated = next(f for f in ans.value.json()["files"] if f["name"] == "summary.csv")
    assert updated["version"] == 2 and updated["sha256"] == sha(fixed.encode())
    expect(item.locator(".vre-AirlockFile-sha")).to_contain_text(sha(fixed.encode()))
    expect(item.locator(".vre-AirlockBadge")).to_have_attribute("data-status", "pending")
    expect(details.locator(".vre-AirlockReviews").first).to_contain_text("(earlier version)")

    with lab.expect_response(lambda r: path(r).endswith(f"/requests/{rid}/submit")) as ans:
        details.get_by_role("button", name=re.compile(f"^Submit request {rid}")).click()
    assert ans.value.status == 200 and ans.value.json()["round"] == 2, ans.value.text()
    expect(details).to_have_attribute("data-state", "submitted")
    expect(row.locator(".vre-AirlockBadge")).to_have_text("submitted")

    # and withdraws it after all (asked in a dialog first)
    details.get_by_role("button", name=f"Withdraw request {rid}").click()
    dialog = lab.locator(".jp-Dialog")
    expect(dialog).to_contain_text(f"Withdraw request #{rid}?")
    with lab.expect_response(lambda r: path(r).endswith(f"/requests/{rid}/withdraw")) as ans:
        dialog.get_by_role("button", name="Withdraw").click()
    assert ans.value.status == 200, ans.value.text()
    expect(details).to_have_attribute("data-state", "withdrawn")
    expect(details.get_by_role("button", name=f"Withdraw request {rid}")).to_have_count(0)

    events = [e for e in json.loads(hub.vre("audit", "query", "--action", "airlock.", "--json", "--limit", "2000").stdout)
              if e["target"] == f"airlock/{rid}" and e["outcome"] == "ok"]
    assert in_order([e["action"] for e in events], ["airlock.create", "airlock.submit", "airlock.review",
                                                     "airlock.return", "airlock.file_update", "airlock.submit",
                                                     "airlock.withdraw"])
    assert not foreign, f"requests left this machine: {foreign}"
