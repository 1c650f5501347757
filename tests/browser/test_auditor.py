"""The auditor's page in real Chromium: log in, filter, drill into a session, verify, export, chart.

Runs against the SQLite hub. Screenshots go to test-artifacts/ (auditor-*.png).
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"

expect = pytest.importorskip("playwright.sync_api").expect

_STORY: dict = {}


@pytest.fixture
def story(sqlite_hub) -> dict:
    """alice's session in a project reading one dataset over two days; bob refused a download."""
    if _STORY:
        return _STORY
    from vre.audit import Event, open_store
    from vre.settings import load

    tag = secrets.token_hex(3)
    project, dataset, other = f"bp-{tag}", f"lung-ct-{tag}", f"prostate-mr-{tag}"
    session = f"{project}-alice-{tag}"
    base = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(days=3)
    E = Event
    events = [
        E("session.start", "alice", "researcher", project=project, session=session, target=f"alice/{project}",
          details={"datasets": [dataset], "profile": "small", "cpu": 1, "mem_mb": 2048}, time=base),
        *[E("dicom.series_view", "alice", "researcher", project=project, dataset=dataset, session=session,
            target=f"/data/{dataset}/series-{i}", details={"series": i}, time=base + timedelta(hours=i * 9),
            source="session")
          for i in range(1, 6)],
        E("session.stop", "alice", "researcher", project=project, session=session, target=f"alice/{project}",
          details={"reason": "stopped"}, time=base + timedelta(hours=50)),
        E("download.refused", "bob", "researcher", outcome="denied", project=f"bq-{tag}", dataset=other,
          session=f"bq-{tag}-bob", target=f"/data/{other}/x.dcm", time=base + timedelta(days=1, hours=3)),
        E("dicom.instance_view", "bob", "researcher", project=f"bq-{tag}", dataset=other,
          session=f"bq-{tag}-bob", target=f"/data/{other}/y.dcm", time=base + timedelta(days=2, hours=3)),
    ]
    open_store(load(environ=sqlite_hub.env)).append_many(events)
    _STORY.update(tag=tag, project=project, dataset=dataset, other=other, session=session, n_session=len(events) - 2)
    return _STORY


def login_form(page, hub, user: str, next_url: str = "/services/vre/audit"):
    page.goto(f"{hub.url}/hub/login?next={next_url}")
    page.fill("#username_input", user)
    page.fill("#password_input", hub.passwords[user])
    page.click("#login_submit")


def wait_loaded(page):
    expect(page.locator("body")).to_have_attribute("data-audit-loading", "false")


def test_auditor_filters_drills_verifies_exports(sqlite_hub, browser_page, story):
    page, hub, s = browser_page, sqlite_hub, story
    login_form(page, hub, "auditor")
    page.wait_for_url(re.compile(r"/services/vre/audit"))
    expect(page.locator("h1")).to_have_text("Audit trail")
    wait_loaded(page)
    expect(page.locator("#audit-rows tr.event-row").first).to_be_visible()

    # filter by dataset: exactly alice's five series views
    page.fill("#f-dataset", s["dataset"])
    page.click("#apply-filters")
    wait_loaded(page)
    rows = page.locator("#audit-rows tr.event-row")
    expect(rows).to_have_count(5)
    expect(page.locator("#result-summary")).to_contain_text("of 5 events")
    for cell in page.locator("#audit-rows .dataset-link").all():
        expect(cell).to_have_text(s["dataset"])
    assert "dataset=" + s["dataset"] in page.url  # the view is bookmarkable
    # session-reported events are marked as such, and the source filters
    for badge in page.locator("#audit-rows .source").all():
        expect(badge).to_have_text("session-reported")
    page.select_option("#f-source", "hub")
    wait_loaded(page)
    expect(page.locator("#audit-rows tr.no-events")).to_have_count(1)
    page.select_option("#f-source", "")
    wait_loaded(page)
    expect(rows).to_have_count(5)

    # the timeline: one series for the dataset, with axes
    expect(page.locator("#timeline svg g.series")).to_have_count(1)
    expect(page.locator(f'#timeline svg g.series[data-dataset="{s["dataset"]}"] circle').first).to_be_attached()
    assert page.locator("#timeline svg .x-axis text.x-label").count() >= 2
    expect(page.locator("#timeline-legend")).to_contain_text(f"{s['dataset']} (5)")
    page.select_option("#bucket", "hour")  # hourly: same series, hour labels, counts unchanged
    expect(page.locator("#timeline svg .x-axis text.x-label").first).to_contain_text(re.compile(r"\d{2}h$"))
    expect(page.locator("#timeline-legend")).to_contain_text(f"{s['dataset']} (5)")
    assert "bucket=hour" in page.url
    page.select_option("#bucket", "day")
    expect(page.locator("#timeline svg .x-axis text.x-label").first).to_contain_text(re.compile(r"^\d{4}-\d{2}-\d{2}$"))

    # details expand
    first = rows.first
    first.locator(".details-toggle").click()
    expect(page.locator("#audit-rows tr.details-row:not(.d-none) pre").first).to_contain_text('"series"')

    # filter by user instead (and the select filters apply at once)
    page.click("#reset-filters")
    wait_loaded(page)
    page.fill("#f-user", "bob")
    page.fill("#f-text", s["tag"])
    page.click("#apply-filters")
    wait_loaded(page)
    expect(rows).to_have_count(2)
    page.select_option("#f-outcome", "denied")
    wait_loaded(page)
    expect(rows).to_have_count(1)
    expect(rows.first.locator(".outcome")).to_have_text("denied")

    # drill into alice's session from a row
    page.click("#reset-filters")
    wait_loaded(page)
    page.fill("#f-project", s["project"])
    page.click("#apply-filters")
    wait_loaded(page)
    page.locator(f'#audit-rows a.session-link[data-session="{s["session"]}"]').first.click()
    wait_loaded(page)
    header = page.locator("#session-header")
    expect(header).to_be_visible()
    expect(header).to_have_attribute("data-loaded", "true")
    expect(page.locator("#sh-id")).to_have_text(s["session"])
    expect(page.locator("#sh-user")).to_have_text("alice")
    expect(page.locator("#sh-project")).to_have_text(s["project"])
    expect(page.locator("#sh-start")).to_contain_text(re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}"))
    expect(page.locator("#sh-stop")).to_contain_text("stopped")
    expect(page.locator("#sh-datasets")).to_have_text(s["dataset"])
    expect(rows).to_have_count(s["n_session"])
    expect(page.locator("#f-session")).to_have_value(s["session"])

    # verify integrity
    page.click("#verify-btn")
    result = page.locator("#verify-result")
    expect(result).to_have_attribute("data-ok", "true", timeout=60_000)
    expect(result).to_contain_text("intact")
    expect(result).to_have_class(re.compile(r"alert-success"))
    expect(result).to_contain_text("events verified")
    assert result.evaluate("el => getComputedStyle(el).borderLeftColor") == "rgb(25, 135, 84)"  # green

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "auditor-session.png"), full_page=True)

    # export the session's view: the download holds exactly its events
    with page.expect_download() as info:
        page.click("#export-jsonl")
    download = info.value
    assert download.suggested_filename.endswith(".jsonl")
    path = ARTIFACTS / "auditor-export.jsonl"
    download.save_as(str(path))
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert len(lines) == s["n_session"]
    assert {e["session"] for e in lines} == {s["session"]}
    assert {e["actor"] for e in lines} == {"alice"}

    with page.expect_download() as info:
        page.click("#export-csv")
    csv_text = Path(info.value.path()).read_text()
    assert csv_text.splitlines()[0].count(",") >= 10 and csv_text.count(s["session"]) >= s["n_session"]

    # an overview for the docs: everything of the tag over all datasets, hourly
    page.click("#sh-clear")
    wait_loaded(page)
    page.fill("#f-project", "")
    page.fill("#f-text", "")
    page.click("#apply-filters")
    wait_loaded(page)
    expect(page.locator("#timeline svg g.series").first).to_be_attached()
    page.screenshot(path=str(ARTIFACTS / "auditor-page.png"), full_page=True)


def test_integrity_problem_is_shown_in_red(sqlite_hub, browser_page, story):
    """The page's rendering of a failed verification (the report is stubbed: the shared test hub's
    real trail must stay intact for the other tests)."""
    page, hub = browser_page, sqlite_hub
    report = {"ok": False, "length": 42, "last_checkpoint": {"seq": 40, "hash": "ab" * 32}, "problem": "hash mismatch",
              "seq": 17, "detail": "record 17 was changed after it was stored", "unsealed": 2, "checkpoints": 1,
              "notes": [], "recorded": True}
    page.route(re.compile(r"/services/vre/api/audit/verify$"),
               lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(report)))
    login_form(page, hub, "auditor")
    page.wait_for_url(re.compile(r"/services/vre/audit"))
    wait_loaded(page)
    page.click("#verify-btn")
    result = page.locator("#verify-result")
    expect(result).to_have_attribute("data-ok", "false")
    expect(result).to_have_class(re.compile(r"alert-danger"))
    expect(result).to_contain_text("hash mismatch")
    expect(result).to_contain_text("at seq 17")
    expect(result).to_contain_text("record 17 was changed")
    color = result.evaluate("el => getComputedStyle(el).borderLeftColor")
    assert color == "rgb(220, 53, 69)", color
    result.screenshot(path=str(ARTIFACTS / "auditor-verify-problem.png"))


def test_researcher_gets_403(sqlite_hub, browser_page):
    page, hub = browser_page, sqlite_hub
    login_form(page, hub, "alice", next_url="/hub/home")
    page.wait_for_url(re.compile(r"/hub/home"))
    response = page.goto(f"{hub.url}/services/vre/audit")
    assert response is not None and response.status == 403
    expect(page.locator("body")).to_contain_text("403")
    expect(page.locator("#audit-rows")).to_have_count(0)
