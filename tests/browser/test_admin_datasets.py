"""The Datasets admin page in real Chromium (``/services/vre/admin/datasets``): the admin follows the
home page's link, is told what is wrong with a bad path (on the form, with what they typed),
registers a small folder of synthetic DICOM with one file that is not DICOM and the cohort's
clinical.csv, watches the indexing end in its report (the unreadable file and the clinical file
named), edits the record's title, re-indexes and retires the dataset (after confirming); a taken
path or name is refused with 409; a researcher gets 403 and no link; every change is in the audit
trail under the admin's name, from the web. Screenshot: docs/screenshot-admin-datasets.png."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

from vre.demo.synth import make_cohort

pytestmark = [pytest.mark.integration, pytest.mark.browser]

PAGE = "/services/vre/admin/datasets"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"

expect = pytest.importorskip("playwright.sync_api").expect


@pytest.fixture
def folder():
    """A folder on the hub's host, readable by sessions: one patient's CT, clinical.csv, and a
    file named like DICOM that is not."""
    root = Path(tempfile.mkdtemp(prefix="vre-admin-ds-"))
    make_cohort("lung-ct", root / "cohort", patients=1, slices=4, size=32, seed=3)
    (root / "cohort" / "scanner-notes.dcm").write_text("exported from the RIS, not an image\n")
    for dirpath, _dirs, files in os.walk(root):
        os.chmod(dirpath, 0o755)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o644)
    yield root / "cohort"
    shutil.rmtree(root, ignore_errors=True)


def fill(page, **fields) -> None:
    for name, value in fields.items():
        page.fill(f"#f-{name}", value)


def test_admin_registers_edits_reindexes_and_retires_a_dataset(sqlite_hub, logged_in, folder):
    hub, slug = sqlite_hub, f"synth-{secrets.token_hex(3)}"
    admin = logged_in(hub, "admin", "/hub/home")
    admin.click("#admin-datasets-link")
    admin.wait_for_url(re.compile(re.escape(PAGE)))
    expect(admin.locator("h1")).to_have_text("Datasets")
    expect(admin.locator("#register-form")).to_contain_text("on the hub's host")

    fill(admin, path=str(folder / "missing"), slug=slug, title="Synthetic chest CT")
    admin.click("#register")
    expect(admin.locator("#error")).to_contain_text("does not exist")
    expect(admin.locator("#f-title")).to_have_value("Synthetic chest CT")  # what was typed stays
    fill(admin, path=str(folder))
    admin.select_option("#f-interoperability_tier", "2")
    fill(admin, condition="Lung cancer", keywords="CT, synthetic", publisher="Test hospital")
    admin.click("#register")
    admin.wait_for_url(re.compile(re.escape(f"{PAGE}/{slug}")))
    expect(admin.locator("#run")).to_have_attribute("data-state", "done", timeout=120_000)  # the script reloads
    expect(admin.locator("#report-summary")).to_contain_text("1 patients, 1 studies, 1 series from 6 files")
    expect(admin.locator("#unreadable")).to_contain_text("scanner-notes.dcm")
    expect(admin.locator("#clinical")).to_contain_text("clinical.csv")
    expect(admin.locator("#f-interoperability_tier")).to_have_value("2")
    xsrf = admin.locator("input[name=_xsrf]").first.input_value()
    poll = """async ([url, token]) => {  // as the page's script polls while an indexing runs
        const r = await fetch(url, {credentials: "same-origin", headers: token ? {"X-XSRFToken": token} : {}});
        return [r.status, await r.json()];
    }"""
    status, progress = admin.evaluate(poll, [f"{PAGE}/{slug}/progress", xsrf])
    assert (status, progress["state"], progress["kind"], progress["report"]["errors"]) == (200, "done", "register", 1)
    assert admin.evaluate(poll, [f"{PAGE}/{slug}/progress", ""])[0] == 403  # a script's request needs the token
    ARTIFACTS.mkdir(exist_ok=True)
    admin.screenshot(path=str(ARTIFACTS / "admin-datasets.png"))
    shutil.copy(ARTIFACTS / "admin-datasets.png", ROOT / "docs" / "screenshot-admin-datasets.png")

    fill(admin, title="Synthetic chest CT, edited")
    admin.click("#save")
    admin.wait_for_url(re.compile(r"done=saved"))
    expect(admin.locator("h1")).to_contain_text("Synthetic chest CT, edited")
    assert json.loads(hub.vre("dataset", "show", slug).stdout)["title"] == "Synthetic chest CT, edited"

    admin.click("#reindex")
    admin.wait_for_url(re.compile(r"done=reindexing"))
    expect(admin.locator("#run")).to_have_attribute("data-state", "done", timeout=120_000)
    expect(admin.locator("#run h2")).to_contain_text("Re-indexing")
    expect(admin.locator("#report-summary")).to_contain_text("(0 read, 5 unchanged")

    # taken names and paths: 409, with the page and its message (the form's token)
    again = admin.request.post(f"{hub.url}{PAGE}", max_redirects=0,
                               form={"_xsrf": xsrf, "path": str(folder), "slug": "synth-other", "title": "T"})
    assert again.status == 409 and "already registered as dataset" in again.text()
    relative = admin.request.post(f"{hub.url}{PAGE}", max_redirects=0,
                                  form={"_xsrf": xsrf, "path": "cohort", "slug": "synth-other", "title": "T"})
    assert relative.status == 400 and "absolute path on the hub" in relative.text()
    assert "Traceback" not in again.text() + relative.text()

    admin.click("#retire")  # not confirmed
    expect(admin.locator("#error")).to_contain_text("tick the box")
    admin.check("#confirm")
    admin.click("#retire")
    admin.wait_for_url(re.compile(r"retired="))
    expect(admin.locator("#done")).to_contain_text(f"{slug}: retired")
    expect(admin.locator(f"#dataset-{slug}")).to_have_count(0)
    assert folder.is_dir() and (folder / "scanner-notes.dcm").exists()  # files untouched

    events = json.loads(hub.vre("audit", "query", "--dataset", slug, "--limit", "100", "--json").stdout)
    got = [(e["action"], e["actor"], e["outcome"], e["details"]["via"]) for e in events]
    assert got == [(a, "admin", "ok", "web") for a in
                   ("dataset.register", "dataset.update", "dataset.reindex", "dataset.remove")], got
    assert all(e["client"] for e in events)
    assert events[1]["details"]["changed"] == ["title"]


@pytest.fixture
def big_folder():
    """600 slices: a few seconds of indexing, in worker processes (over 200 files)."""
    root = Path(tempfile.mkdtemp(prefix="vre-admin-ds-"))
    make_cohort("lung-ct", root / "cohort", patients=3, slices=200, size=32, seed=4)
    for dirpath, _dirs, files in os.walk(root):
        os.chmod(dirpath, 0o755)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o644)
    yield root / "cohort"
    shutil.rmtree(root, ignore_errors=True)


def test_the_page_follows_a_longer_indexing_live(sqlite_hub, logged_in, big_folder):
    hub, slug = sqlite_hub, f"synth-{secrets.token_hex(3)}"
    admin = logged_in(hub, "admin", PAGE)
    polled = []

    def watch(route):  # what the page's script reads, passed on unchanged
        response = route.fetch()
        polled.append((response.status, response.json()))
        route.fulfill(response=response)
    admin.route(re.compile(r"/progress$"), watch)
    fill(admin, path=str(big_folder), slug=slug, title="Synthetic chest CT, 600 slices")
    admin.click("#register")
    admin.wait_for_url(re.compile(re.escape(f"{PAGE}/{slug}")))
    assert admin.locator("#run").get_attribute("data-state") == "running"  # the page came before the report
    expect(admin.locator("#progress-text")).to_contain_text(re.compile(r"\d+ of 600 files read"))  # live
    expect(admin.locator("#run")).to_have_attribute("data-state", "done", timeout=180_000)  # the script reloads
    expect(admin.locator("#report-summary")).to_contain_text("from 601 files (600 read")
    assert polled and all(status == 200 for status, _ in polled), polled
    assert polled[-1][1]["state"] == "done" and all(p["total"] in (None, 600) for _, p in polled)
    assert any(p["state"] == "running" and p["total"] == 600 for _, p in polled), polled  # polled while it ran
    admin.check("#confirm")
    admin.click("#retire")
    admin.wait_for_url(re.compile(r"retired="))


def test_researchers_get_403_and_no_link(sqlite_hub, logged_in):
    bob = logged_in(sqlite_hub, "bob", "/hub/home")
    expect(bob.locator("#catalogue-link")).to_be_visible()
    expect(bob.locator("#admin-datasets-link")).to_have_count(0)
    for path in (PAGE, f"{PAGE}/lung-ct"):
        r = bob.goto(f"{sqlite_hub.url}{path}")
        assert r.status == 403
