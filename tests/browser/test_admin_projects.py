"""The Projects admin page in real Chromium (``/services/vre/admin/projects``, plain forms): the
admin follows the home page's link, creates a project, grants it a demo dataset batch-only (chosen
from the registered ones), adds a member and a profile (a bad memory "12X" first: refused with its
message, the values kept), sets the batch quota and the airlock's reviewer count; the CLI then shows
the same project; a researcher gets 403 and no link; every change is in the audit trail under the
admin's name, from the web. Screenshot: docs/screenshot-admin-projects.png."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.browser]

USER, PASSWORD = "pia", "pia-password-1"  # a researcher of this test's own: the demo's projects stay as they are
SLUG, DATASET = "kidney-ai", "lung-ct-screening"
PAGE = "/services/vre/admin/projects"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"

expect = pytest.importorskip("playwright.sync_api").expect


@pytest.fixture
def hub(sqlite_hub):
    sqlite_hub.account(USER, PASSWORD)
    return sqlite_hub


def submit(page, form: str, done: str) -> None:
    """Submit ``form`` and wait for the page it redirects to after the change."""
    page.locator(f"{form} button[type=submit]").click()
    page.wait_for_url(re.compile(rf"done={done}"))


def test_admin_creates_and_equips_a_project(hub, logged_in):
    admin = logged_in(hub, "admin", "/hub/home")
    admin.click("#admin-projects-link")
    admin.wait_for_url(re.compile(re.escape(PAGE)))
    expect(admin.locator("h1")).to_have_text("Projects")
    expect(admin.locator("#project-prostate-ai")).to_be_visible()  # the demo's

    admin.fill("#create-slug", SLUG)
    admin.fill("#create-title", "Kidney tumour segmentation")
    admin.fill("#create-description", "Renal CT, nnU-Net baseline")
    admin.fill("#create-expires", "2099-12-31")
    submit(admin, "#create-form", "create")
    expect(admin.locator("#done")).to_contain_text("project created")
    expect(admin.locator("#permit-state")).to_contain_text("valid until 2100-01-01 00:00 UTC")

    admin.select_option("#grant-dataset", DATASET)
    admin.select_option("#grant-mode", "batch-only")
    submit(admin, "#grant-form", "grant")
    expect(admin.locator(f"#grant-{DATASET}")).to_have_attribute("data-mode", "batch-only")

    admin.fill("#member-user", USER)
    submit(admin, "#add-member-form", "add-member")
    expect(admin.locator(f"#member-{USER}")).to_be_visible()

    admin.fill("#profile-name", "standard")
    admin.fill("#profile-cpu", "2")
    admin.fill("#profile-memory", "12X")
    with admin.expect_response(re.compile(r"/set-profile$")) as refused:
        admin.locator("#set-profile-form button[type=submit]").click()
    assert refused.value.status == 400
    expect(admin.locator("#profiles #error")).to_contain_text("invalid memory '12X': write e.g. 512M, 4G or 16GiB")
    expect(admin.locator("#profile-name")).to_have_value("standard")  # what was typed stays
    admin.fill("#profile-memory", "8G")
    submit(admin, "#set-profile-form", "set-profile")
    expect(admin.locator("#profile-standard .resources")).to_have_text("2 CPU, 8 GiB RAM")

    admin.fill("#quota-jobs", "3")
    admin.fill("#quota-memory", "32G")
    submit(admin, "#set-quota-form", "set-quota")
    expect(admin.locator("#quota-state")).to_contain_text("3 job(s) at once")
    admin.fill("#airlock-reviews", "1")
    submit(admin, "#set-airlock-reviews-form", "set-airlock-reviews")
    expect(admin.locator("#airlock-reviews")).to_have_value("1")
    ARTIFACTS.mkdir(exist_ok=True)
    admin.screenshot(path=str(ARTIFACTS / "admin-projects.png"), full_page=True)
    shutil.copy(ARTIFACTS / "admin-projects.png", ROOT / "docs" / "screenshot-admin-projects.png")

    # what the page does not offer is refused all the same, on the page, never a traceback
    xsrf = admin.locator("input[name=_xsrf]").first.input_value()
    r = admin.request.post(f"{hub.url}{PAGE}/{SLUG}/grant", form={"_xsrf": xsrf, "dataset": "nope"}, max_redirects=0)
    assert r.status == 404 and "unknown dataset" in r.text() and "Traceback" not in r.text()

    show = json.loads(hub.vre("project", "show", SLUG).stdout)  # the CLI's twin sees the same project
    assert show["members"] == [USER] and show["profiles"]["standard"]["mem_mb"] == 8192
    assert [(g["dataset"], g["mode"]) for g in show["grants"]] == [(DATASET, "batch-only")]
    assert (show["job_quota"]["slots"], show["job_quota"]["mem_mb"]) == (3, 32768)
    events = json.loads(hub.vre("audit", "query", "--project", SLUG, "--limit", "100", "--json").stdout)
    got = [(e["action"], e["actor"], e["outcome"], e["details"]["via"]) for e in events]
    assert got == [(a, "admin", "ok", "web") for a in ("project.create", "project.grant", "project.member_add",
                                                       "project.profile_set", "project.update", "airlock.rules")], got
    assert all(e["client"] for e in events)


def test_researchers_get_403_and_no_link(hub, logged_in):
    bob = logged_in(hub, "bob", "/hub/home")
    expect(bob.locator("#catalogue-link")).to_be_visible()
    expect(bob.locator("#admin-projects-link")).to_have_count(0)
    for path in (PAGE, f"{PAGE}/prostate-ai"):
        r = bob.goto(f"{hub.url}{path}")
        assert r.status == 403
        expect(bob.locator("body")).to_contain_text("403")
