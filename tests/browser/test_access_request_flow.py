"""Access requests end to end in real Chromium, on the VRE service's pages (no script needed):
bob browses the catalogue (records only, filters), asks for ``lung-ct-screening`` for his project
``prostate-ai``; a form refused by the rules comes back with its message; the admin denies a first
request with a reason bob then reads, bob withdraws a second one, the admin approves a third as batch-only with an expiry; bob
sees the decision; the grant exists with that mode (``vre project show``); the audit trail has
every step. Screenshot: docs/screenshot-catalogue.png.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
PROJECT, DATASET = "prostate-ai", "lung-ct-screening"
WHY = "Our lesion detector must be checked for false positives on chest CT of a screening cohort."
USE = "Batch inference of the detector, summary metrics only."
REASON = "Interactive access to screening CT needs the ethics amendment first; ask for batch-only."

expect = pytest.importorskip("playwright.sync_api").expect


@pytest.fixture
def hub(sqlite_hub):
    """The demo hub; the grant this test makes is revoked afterwards (other tests know prostate-ai)."""
    yield sqlite_hub
    show = json.loads(sqlite_hub.vre("project", "show", PROJECT).stdout)
    if DATASET in show["datasets"]:
        sqlite_hub.vre("project", "revoke", PROJECT, DATASET)


def ask(page, mode: str, justification: str = WHY) -> None:
    card = page.locator(f"#dataset-{DATASET}")
    if not card.locator("details").evaluate("d => d.open"):
        card.locator("summary.request-toggle").click()
    card.locator("select[name=project]").select_option(PROJECT)
    card.locator(f"#mode-{DATASET}-{mode}").check()
    card.locator("textarea[name=justification]").fill(justification)
    card.locator("textarea[name=intended_use]").fill(USE)
    card.locator("button.request-submit").click()


def test_researcher_requests_admin_denies_then_approves_batch_only(hub, logged_in):
    bob = logged_in(hub, "bob", "/hub/home")
    bob.click("#catalogue-link")  # the home page links the catalogue (the service's OAuth is silent)
    bob.wait_for_url(re.compile(r"/services/vre/catalogue"))
    expect(bob.locator("h1")).to_have_text("Dataset catalogue")
    lung = bob.locator(f"#dataset-{DATASET}")
    expect(lung).to_contain_text("Lung cancer")
    expect(lung).to_contain_text("None of your projects has this dataset.")
    expect(bob.locator("#dataset-prostate-mri .vre-held")).to_contain_text(f"{PROJECT}: interactive")
    assert "demo-data" not in bob.content() and "/data/" not in bob.content()  # records, never paths
    # filters (plain GET form)
    bob.locator("#f-modality").select_option("MR")
    bob.click("#apply-filters")
    expect(bob.locator(".vre-dataset")).to_have_count(1)
    expect(bob.locator("#dataset-prostate-mri")).to_be_visible()
    bob.goto(f"{hub.url}/services/vre/catalogue?condition=Lung%20cancer&tier=2")
    expect(bob.locator(".vre-dataset")).to_have_count(1)
    expect(lung).to_be_visible()

    # a POST without the page's XSRF token is not bob's (his login cookie alone does not count)
    before = len(json.loads(hub.vre("access-request", "list", "--json").stdout))
    forged = bob.request.post(f"{hub.url}/services/vre/catalogue", max_redirects=0, form={
        "project": PROJECT, "dataset": DATASET, "mode": "interactive", "justification": WHY, "intended_use": USE})
    assert forged.status in (302, 403), forged.status
    assert len(json.loads(hub.vre("access-request", "list", "--json").stdout)) == before

    # a justification too short: the form comes back with the message and what was typed
    ask(bob, "interactive", justification="need it")
    expect(lung.locator(".vre-form-error")).to_contain_text("write at least 20 characters")
    expect(lung.locator("textarea[name=intended_use]")).to_have_value(USE)
    ask(bob, "interactive")
    bob.wait_for_url(re.compile(r"/services/vre/access-requests\?done=requested"))
    expect(bob.locator("#done")).to_contain_text("sent")
    first = bob.locator("#my-requests tbody tr").first
    rid = int(first.get_attribute("id").split("-")[1])
    expect(first).to_have_attribute("data-state", "open")

    admin = logged_in(hub, "admin", "/services/vre/access-requests")
    card = admin.locator(f"#decide-{rid}")
    expect(card).to_contain_text(WHY)
    expect(card).to_contain_text(USE)
    card.locator("button.deny").click()  # no reason: refused, explained
    expect(admin.locator(f"#decide-{rid} .vre-form-error")).to_contain_text("a reason for the denial is required")
    admin.locator(f"#reason-{rid}").fill(REASON)
    admin.locator(f"#decide-{rid} button.deny").click()
    admin.wait_for_url(re.compile(r"done=denied"))
    expect(admin.locator(f"#decide-{rid}")).to_have_count(0)

    bob.reload()
    row = bob.locator(f"#request-{rid}")
    expect(row).to_have_attribute("data-state", "denied")
    expect(row.locator(".reason")).to_have_text(REASON)

    # asked again, then withdrawn: the pair is free again
    bob.goto(f"{hub.url}/services/vre/catalogue")
    ask(bob, "interactive")
    bob.wait_for_url(re.compile(r"done=requested"))
    taken_back = int(bob.locator("#my-requests tbody tr").first.get_attribute("id").split("-")[1])
    bob.locator(f"#request-{taken_back} button.withdraw").click()
    bob.wait_for_url(re.compile(r"done=withdrawn"))
    expect(bob.locator(f"#request-{taken_back}")).to_have_attribute("data-state", "withdrawn")

    # again, batch-only; approved with an expiry
    bob.goto(f"{hub.url}/services/vre/catalogue")
    ask(bob, "batch-only")
    bob.wait_for_url(re.compile(r"done=requested"))
    rid2 = int(bob.locator("#my-requests tbody tr").first.get_attribute("id").split("-")[1])
    assert rid2 != rid
    until = (dt.date.today() + dt.timedelta(days=90)).isoformat()
    admin.goto(f"{hub.url}/services/vre/access-requests")
    admin.locator(f"#expires-{rid2}").fill("the day after tomorrow")
    admin.locator(f"#decide-{rid2} button.approve").click()
    expect(admin.locator(f"#decide-{rid2} .vre-form-error")).to_contain_text("invalid expiry")
    expect(admin.locator(f"#mode-{rid2}")).to_have_value("batch-only")
    admin.locator(f"#expires-{rid2}").fill(until)
    admin.locator(f"#decide-{rid2} button.approve").click()
    admin.wait_for_url(re.compile(r"done=approved"))

    bob.reload()
    row = bob.locator(f"#request-{rid2}")
    expect(row).to_have_attribute("data-state", "approved")
    expect(row.locator(".decision")).to_contain_text("granted batch-only until")
    expect(row.locator("form")).to_have_count(0)  # nothing left to withdraw
    bob.goto(f"{hub.url}/services/vre/catalogue")
    expect(lung.locator(".vre-held")).to_contain_text(f"{PROJECT}: batch-only, until")
    ARTIFACTS.mkdir(exist_ok=True)
    bob.screenshot(path=str(ARTIFACTS / "catalogue.png"))
    shutil.copy(ARTIFACTS / "catalogue.png", ROOT / "docs" / "screenshot-catalogue.png")

    show = json.loads(hub.vre("project", "show", PROJECT).stdout)
    grant = next(g for g in show["grants"] if g["dataset"] == DATASET)
    assert grant["mode"] == "batch-only" and grant["expires_at"] > until
    # the CLI twin: the decision is final
    r = hub.vre("access-request", "deny", str(rid2), "--reason", "too late now", check=False)
    assert r.returncode == 2 and "already approved" in r.stderr
    events = json.loads(hub.vre("audit", "query", "--action", "access_request.", "--json").stdout)
    mine = [(e["action"], e["actor"], e["outcome"]) for e in events
            if e["target"] in (f"access-request/{rid}", f"access-request/{rid2}")]
    for step in [("access_request.create", "bob", "ok"), ("access_request.deny", "admin", "ok"),
                 ("access_request.approve", "admin", "ok")]:
        assert step in mine, (step, mine)
    assert any(e["action"] == "access_request.withdraw" and e["target"] == f"access-request/{taken_back}"
               and e["actor"] == "bob" for e in events)
    deny = next(e for e in events if e["action"] == "access_request.deny" and e["target"] == f"access-request/{rid}")
    assert deny["details"]["reason"] == REASON and deny["project"] == PROJECT and deny["dataset"] == DATASET
    approve = next(e for e in events if e["action"] == "access_request.approve" and e["outcome"] == "ok"
                   and e["target"] == f"access-request/{rid2}")
    assert approve["details"]["mode"] == "batch-only" and approve["details"]["expires_at"] > until
