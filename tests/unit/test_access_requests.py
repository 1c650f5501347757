"""Access requests (vre.access_requests): who may ask and decide, one open request per pair, final
decisions, the grant an approval makes, the audit trail, the catalogue researchers browse, the
migrations from 0010 and 0013, requests outliving their dataset and the CLI's errors. On SQLite and
PostgreSQL."""

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select, text

from vre import access_requests as AR
from vre import db as vdb
from vre import projects as P
from vre.accounts import add_account
from vre.audit import open_store
from vre.catalog.browse import browse
from vre.errors import NotFound, VREError
from vre.settings import Settings

WHY = "Validate our nodule detector on an independent screening cohort."
USE = "Batch inference and evaluation metrics only."
LUNG = {"title": "Lung CT record", "description": "Screening CT", "publisher": "Holder", "condition": "Lung cancer",
        "interoperability_tier": 2, "keywords": ["lung"], "modalities": ["CT"], "body_parts": ["CHEST"],
        "num_subjects": 4, "num_studies": 4, "indexed_at": "2026-01-01"}
PROSTATE = {"title": "Prostate MR record", "condition": "Prostate cancer", "interoperability_tier": 3,
            "modalities": ["MR"], "body_parts": ["PROSTATE"], "num_subjects": 3}


@pytest.fixture
def world(db_url, tmp_path):
    """bob in prostate-ai (has prostate-mri); alice in lung-screening; admin; stewart, steward of lung-ct;
    an auditor. Two admins (admin, root-like admin2) to decide each other's requests."""
    settings = Settings(state_dir=tmp_path / "state", db_url=db_url)
    with vdb.session_scope(db_url) as db:
        for name, role in (("bob", "researcher"), ("alice", "researcher"), ("admin", "admin"),
                           ("admin2", "admin"), ("stewart", "researcher"), ("aud", "auditor")):
            add_account(db, name, role=role, password=f"{name}-password-1")
        db.add(vdb.Dataset(slug="lung-ct", title="Lung CT", path="/srv/secret/lung", catalog=LUNG))
        db.add(vdb.Dataset(slug="prostate-mri", title="Prostate MR", path="/srv/secret/prostate", catalog=PROSTATE))
        db.flush()
        P.create_project(db, "prostate-ai", "Prostate AI")
        P.create_project(db, "lung-screening", "Lung screening")
        P.grant(db, "prostate-ai", "prostate-mri")
        P.add_member(db, "prostate-ai", "bob")
        P.add_member(db, "prostate-ai", "admin")
        P.add_member(db, "lung-screening", "alice")
        AR.add_steward(db, "lung-ct", "stewart")
    return settings


def ask(settings, who="bob", project="prostate-ai", dataset="lung-ct", mode="batch-only", **kw):
    return AR.create(settings, AR.Actor(who), project, dataset, mode=mode,
                     justification=kw.get("justification", WHY), intended_use=kw.get("intended_use", USE))


def events(settings, prefix="access_request."):
    return [(e["action"], e["outcome"], e["actor"], e["project"], e["dataset"], e["details"])
            for e in open_store(settings).query(limit=100, newest_first=False, action=prefix)]


def generation(settings) -> int:
    with vdb.session_scope(settings.vre_db_url) as db:
        return db.get(vdb.PlanGeneration, 1).n


def test_approval_creates_the_grant_with_the_deciders_mode_and_expiry(world):
    before = generation(world)
    req = ask(world)
    assert generation(world) == before  # a request changes no plan
    assert (req["state"], req["mode"], req["requester"]) == ("open", "batch-only", "bob")
    later = (dt.date.today() + dt.timedelta(days=30)).isoformat()
    out = AR.approve(world, AR.Actor("admin2"), req["id"], mode="batch-only", expires=later)
    assert (out["state"], out["decided_by"], out["granted_mode"]) == ("approved", "admin2", "batch-only")
    assert generation(world) > before  # the grant moved it
    with vdb.session_scope(world.vre_db_url) as db:
        g = next(g for g in P.get_project(db, "prostate-ai").grants if g.dataset.slug == "lung-ct")
        assert g.mode == "batch-only" and g.expires_at.date().isoformat() > later[:10] >= dt.date.today().isoformat()
    acts = events(world)
    assert [a[:5] for a in acts] == [("access_request.create", "ok", "bob", "prostate-ai", "lung-ct"),
                                     ("access_request.approve", "ok", "admin2", "prostate-ai", "lung-ct")]
    assert acts[1][5]["mode"] == "batch-only" and acts[1][5]["expires_at"].startswith(later[:4])
    grants = events(world, "project.grant")
    assert grants[-1][2] == "admin2" and grants[-1][5]["access_request"] == req["id"]
    assert grants[-1][5]["mode"] == "batch-only"


def test_approval_defaults_to_the_mode_asked_for_and_stewards_decide_their_datasets(world):
    req = ask(world, mode="interactive")
    with pytest.raises(AR.Forbidden, match="admins and the stewards"):
        AR.approve(world, AR.Actor("alice"), req["id"])
    out = AR.approve(world, AR.Actor("stewart"), req["id"])
    assert (out["granted_mode"], out["granted_expires_at"]) == ("interactive", None)
    # a steward of lung-ct decides nothing about prostate-mri
    other = ask(world, who="alice", project="lung-screening", dataset="prostate-mri")
    with pytest.raises(AR.Forbidden):
        AR.deny(world, AR.Actor("stewart"), other["id"], "not yours to decide")
    assert [e[:3] for e in events(world) if e[1] == "denied"] == [
        ("access_request.approve", "denied", "alice"), ("access_request.deny", "denied", "stewart")]


def test_only_members_ask_and_the_texts_are_required_and_limited(world):
    with pytest.raises(AR.Forbidden, match="not a member of project 'lung-screening'"):
        ask(world, project="lung-screening")
    with pytest.raises(AR.Forbidden):
        ask(world, who="aud")
    with pytest.raises(VREError, match="justification is required: write at least 20"):
        ask(world, justification="  because ")
    with pytest.raises(VREError, match="intended use is required"):
        ask(world, intended_use="")
    with pytest.raises(VREError, match="too long: at most 4000"):
        ask(world, justification="x" * 4001)
    with pytest.raises(VREError, match="unknown grant mode 'all'"):
        ask(world, mode="all")
    with pytest.raises(NotFound, match="unknown dataset 'nope'"):
        ask(world, dataset="nope")
    with pytest.raises(VREError, match="already has dataset 'prostate-mri'"):
        ask(world, dataset="prostate-mri")
    assert events(world) == []


def test_one_open_request_per_pair_and_withdrawing_reopens_the_pair(world):
    first = ask(world)
    with pytest.raises(VREError, match="already has an open request"):
        ask(world, who="admin")  # another member, same pair
    with pytest.raises(AR.Forbidden, match="only its requester"):
        AR.withdraw(world, AR.Actor("admin"), first["id"])
    assert AR.withdraw(world, AR.Actor("bob"), first["id"])["state"] == "withdrawn"
    with pytest.raises(AR.Decided, match="already withdrawn by bob"):
        AR.approve(world, AR.Actor("admin2"), first["id"])
    second = ask(world)
    assert second["id"] != first["id"]
    # the database holds the rule too, whatever the code checks
    with pytest.raises(Exception), vdb.session_scope(world.vre_db_url) as db:
        row = db.get(vdb.AccessRequest, second["id"])
        db.add(vdb.AccessRequest(project_id=row.project_id, dataset_id=row.dataset_id, requester_id=row.requester_id,
                                 mode="interactive", justification=WHY, intended_use=USE, state="open", reason=""))
        db.flush()


def test_nobody_decides_their_own_request_admins_included(world):
    req = ask(world, who="admin")
    with pytest.raises(AR.Forbidden, match="your own"):
        AR.approve(world, AR.Actor("admin"), req["id"])
    with pytest.raises(AR.Forbidden, match="your own"):
        AR.deny(world, AR.Actor("admin"), req["id"], "I changed my mind")
    assert AR.to_decide(world, AR.Actor("admin")) == []
    assert [r["id"] for r in AR.to_decide(world, AR.Actor("admin2"))] == [req["id"]]
    assert [(e[0], e[1]) for e in events(world)][-2:] == [("access_request.approve", "denied"),
                                                          ("access_request.deny", "denied")]


def test_a_decision_is_final_and_a_denial_needs_a_reason(world):
    req = ask(world)
    with pytest.raises(VREError, match="a reason for the denial is required"):
        AR.deny(world, AR.Actor("admin2"), req["id"], " ")
    out = AR.deny(world, AR.Actor("admin2"), req["id"], "Tier 3 data needs an ethics approval first.")
    assert (out["state"], out["reason"]) == ("denied", "Tier 3 data needs an ethics approval first.")
    with pytest.raises(AR.Decided, match="already denied by admin2"):
        AR.approve(world, AR.Actor("admin"), req["id"])
    with pytest.raises(AR.Decided):
        AR.withdraw(world, AR.Actor("bob"), req["id"])
    with vdb.session_scope(world.vre_db_url) as db:
        assert all(g.dataset.slug != "lung-ct" for g in P.get_project(db, "prostate-ai").grants)
    assert events(world)[-1][5]["reason"] == "Tier 3 data needs an ethics approval first."
    # bob sees the decision
    mine = AR.list_requests(world, AR.Actor("bob"), mine=True)
    assert [(r["state"], r["reason"]) for r in mine] == [("denied", out["reason"])]


def test_a_bad_expiry_decides_nothing(world):
    req = ask(world)
    with pytest.raises(VREError, match="in the past"):
        AR.approve(world, AR.Actor("admin2"), req["id"], expires="2001-01-01")
    with pytest.raises(VREError, match="invalid expiry"):
        AR.approve(world, AR.Actor("admin2"), req["id"], expires="next week")
    for far in ("9999-12-31", "0001-01-01T00:00:00+05:00"):  # before: OverflowError, an HTTP 500
        with pytest.raises(VREError, match=r"is out of range: give a date from 1970-01-01 to 2200-12-31"):
            AR.approve(world, AR.Actor("admin2"), req["id"], expires=far)
    assert AR.list_requests(world, open_only=True)[0]["id"] == req["id"]


def test_the_catalogue_shows_records_only_with_filters_and_what_my_projects_hold(world):
    req = ask(world)
    view = browse_as(world, "bob")
    assert [d["slug"] for d in view["datasets"]] == ["lung-ct", "prostate-mri"]
    text_of_page = json.dumps(view)
    assert "/srv/secret" not in text_of_page and "indexed_at" not in text_of_page
    lung, prostate = view["datasets"]
    assert lung["requests"] == [{"id": req["id"], "project": "prostate-ai", "mode": "batch-only", "requester": "bob"}]
    assert lung["requestable"] == [] and lung["held"] == []
    assert prostate["held"] == [{"project": "prostate-ai", "mode": "interactive", "expired": False, "until": None}]
    assert view["facets"] == {"modality": ["CT", "MR"], "body_part": ["CHEST", "PROSTATE"],
                              "condition": ["Lung cancer", "Prostate cancer"], "tier": ["2", "3"]}
    assert [d["slug"] for d in browse_as(world, "bob", modality="ct")["datasets"]] == ["lung-ct"]
    assert [d["slug"] for d in browse_as(world, "bob", tier="3", body_part="prostate")["datasets"]] == ["prostate-mri"]
    assert browse_as(world, "bob", condition="Lung cancer", tier="3")["datasets"] == []
    # alice's project has neither: she may ask for both, and sees nothing of bob's projects
    alice = browse_as(world, "alice")
    assert [d["requestable"] for d in alice["datasets"]] == [["lung-screening"], ["lung-screening"]]
    assert all(d["held"] == [] and d["requests"] == [] for d in alice["datasets"])


def browse_as(settings, name, **filters):
    with vdb.session_scope(settings.vre_db_url) as db:
        return browse(db, name, filters)


def test_stewards_are_never_auditors_and_see_the_deciders_part(world):
    with vdb.session_scope(world.vre_db_url) as db:
        with pytest.raises(VREError, match="auditor"):
            AR.add_steward(db, "lung-ct", "aud")
        assert [AR.decider_of(db, n) for n in ("stewart", "admin", "bob", "aud", "nobody")] == [
            True, True, False, False, False]
        AR.remove_steward(db, "lung-ct", "stewart")
        assert not AR.decider_of(db, "stewart")
        with pytest.raises(VREError, match="not a steward"):
            AR.remove_steward(db, "lung-ct", "stewart")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_from_0010_keeps_grants_and_adds_the_tables(backend, request, tmp_path):
    url = f"sqlite:///{tmp_path / 'vre.sqlite'}" if backend == "sqlite" else request.getfixturevalue("postgres").new_database()
    vdb.upgrade(url, "0010")
    now = "2026-12-01 10:00:00+00:00"
    with vdb.engine_for(url).begin() as conn:
        conn.execute(text("INSERT INTO datasets (slug, title, path, catalog, registered_at) "
                          "VALUES ('old-ct', 'Old', '/srv/old', '{}', :t)"), {"t": now})
        conn.execute(text("INSERT INTO projects (slug, title, description, created_at) "
                          "VALUES ('old', 'Old', '', :t)"), {"t": now})
        conn.execute(text("INSERT INTO grants (project_id, dataset_id, granted_at, mode) SELECT p.id, d.id, :t, "
                          "'batch-only' FROM projects p, datasets d"), {"t": now})
    vdb.upgrade(url)
    settings = Settings(state_dir=tmp_path / "state", db_url=url)
    with vdb.session_scope(url) as db:
        assert db.scalar(select(vdb.Grant)).mode == "batch-only"
        add_account(db, "ann", password="ann-password-1")
        db.add(vdb.Dataset(slug="new-ct", title="New", path="/srv/new", catalog={}))
        db.flush()
        P.add_member(db, "old", "ann")
    req = ask(settings, who="ann", project="old", dataset="new-ct")
    with pytest.raises(VREError, match="already has an open request"):
        ask(settings, who="ann", project="old", dataset="new-ct")
    assert AR.list_requests(settings)[0]["id"] == req["id"]


# --- the CLI ----------------------------------------------------------------------------------
VRE = str(Path(sys.executable).parent / "vre")


def test_cli_lists_approves_and_denies_with_the_same_rules(tmp_path):
    env = {**os.environ, "VRE_STATE_DIR": str(tmp_path / "state"), "VRE_RUN_DIR": "/tmp/vre-cli-run"}

    def run(*args):
        return subprocess.run([VRE, *args], env=env, capture_output=True, text=True, timeout=120)

    settings = Settings(state_dir=tmp_path / "state")
    assert run("db", "upgrade").returncode == 0
    with vdb.session_scope(settings.vre_db_url) as db:
        for name, role in (("bob", "researcher"), ("admin", "admin")):
            add_account(db, name, role=role, password=f"{name}-password-1")
        db.add(vdb.Dataset(slug="lung-ct", title="Lung CT", path="/srv/lung", catalog=LUNG))
        db.add(vdb.Dataset(slug="mr", title="MR", path="/srv/mr", catalog=PROSTATE))
        db.flush()
        P.create_project(db, "prostate-ai", "Prostate AI")
        P.add_member(db, "prostate-ai", "bob")
        P.add_member(db, "prostate-ai", "admin")
    first = ask(settings)
    second = ask(settings, who="admin", dataset="mr")

    r = run("access-request", "list", "--open")
    assert r.returncode == 0 and "lung-ct" in r.stdout and "mr" in r.stdout
    errors = [
        (("access-request", "approve", "999"), "there is no access request 999"),
        (("access-request", "approve", str(first["id"]), "--expires", "someday"), "invalid expiry 'someday'"),
        (("access-request", "approve", str(first["id"]), "--mode", "all"), "invalid choice: 'all'"),
        (("access-request", "deny", str(first["id"]), "--reason", ""), "a reason for the denial is required"),
        (("access-request", "deny", str(first["id"])), "the following arguments are required: --reason"),
        (("access-request", "approve", str(second["id"]), "--as", "admin"), "is your own"),
        (("access-request", "approve", str(first["id"]), "--as", "bob"), "is your own"),
        (("access-request", "withdraw", str(first["id"])), "only its requester"),
    ]
    for args, message in errors:
        r = run(*args)
        assert r.returncode == 2 and message in r.stderr, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr
    later = (dt.date.today() + dt.timedelta(days=10)).isoformat()
    r = run("access-request", "approve", str(first["id"]), "--mode", "batch-only", "--expires", later)
    assert r.returncode == 0 and "granted to 'prostate-ai' (batch-only, until" in r.stdout, r.stderr
    r = run("access-request", "approve", str(first["id"]))
    assert r.returncode == 2 and "already approved" in r.stderr
    r = run("access-request", "deny", str(second["id"]), "--reason", "Not needed for this project.")
    assert r.returncode == 0, r.stderr
    show = json.loads(run("project", "show", "prostate-ai").stdout)
    assert [(g["dataset"], g["mode"]) for g in show["grants"]] == [("lung-ct", "batch-only")]
    listed = json.loads(run("access-request", "list", "--json", "--as", "bob").stdout)
    assert [(r["id"], r["state"]) for r in listed] == [(first["id"], "approved")]
    assert json.loads(run("access-request", "list", "--open", "--json").stdout) == []
    acts = [(e["action"], e["outcome"], e["details"].get("via")) for e in
            json.loads(run("audit", "query", "--action", "access_request.", "--json").stdout)]
    assert ("access_request.approve", "ok", "cli") in acts and ("access_request.deny", "ok", "cli") in acts
    assert ("access_request.approve", "denied", "cli") in acts
    r = run("dataset", "add-steward", "lung-ct", "nobody")
    assert r.returncode == 2 and "nobody" in r.stderr
    r = run("dataset", "add-steward", "lung-ct", "bob")
    assert r.returncode == 0 and "now decides access requests" in r.stdout
    # the denied request outlives its dataset: listed under the slug it kept, marked retired
    assert run("dataset", "remove", "mr").returncode == 0
    r = run("access-request", "list")
    line = next(x for x in r.stdout.splitlines() if x.split()[:1] == [str(second["id"])])
    assert "mr (retired)" in line and "denied" in line, r.stdout
    listed = {r["id"]: r for r in json.loads(run("access-request", "list", "--json").stdout)}
    assert (listed[second["id"]]["dataset"], listed[second["id"]]["dataset_retired"]) == ("mr", True)
    assert listed[first["id"]]["dataset_retired"] is False


# --- the pages ---------------------------------------------------------------------------------
PAGE_NS = dict(base_url="/hub/", prefix="/", static_url=lambda p, include_version=True: "/hub/static/" + p, user=None,
               services=[], parsed_scopes={}, expanded_scopes=set(), no_spawner_check=True, xsrf_token="tok",
               announcement=None, version_hash="", login_url="/hub/login", logout_url="/hub/logout",
               modes=["interactive", "batch-only"], catalogue_url="/services/vre/catalogue",
               requests_url="/services/vre/access-requests")


def test_the_pages_are_service_routes_never_session_ones():
    from vre.api import routes
    from vre.api.access_pages import CataloguePage, RequestAction, RequestsPage

    full = {r[0]: r[1] for r in routes(Settings()) if isinstance(r[1], type)}
    assert full[r"catalogue/?"] is CataloguePage and full[r"access-requests/?"] is RequestsPage
    assert full[r"access-requests/(\d+)/(withdraw|approve|deny)"] is RequestAction
    assert not any(r[0].startswith(("catalogue", "access-requests")) for r in routes(Settings(), sessions_only=True))
    from vre.roles import CATALOGUE_SCOPE, load_roles

    roles = {r["name"]: r for r in load_roles()}
    assert CATALOGUE_SCOPE in roles["user"]["scopes"] and CATALOGUE_SCOPE not in roles["server"]["scopes"]


def test_the_pages_render_escaped_with_the_form_kept_after_an_error(world):
    from vre.api.pages import environment

    ask(world, justification="<script>alert(1)</script> because we need it")
    view = browse_as(world, "alice")
    html = environment().get_template("catalogue.html").render(
        catalogue=view, error={"dataset": "lung-ct", "message": "a justification is required"},
        form={"project": "lung-screening", "mode": "batch-only", "justification": "short", "intended_use": "x"},
        **PAGE_NS)
    assert "a justification is required" in html and ">short</textarea>" in html
    assert 'name="_xsrf" value="tok"' in html and "/srv/secret" not in html
    to_decide = AR.to_decide(world, AR.Actor("admin2"))
    rid = to_decide[0]["id"]
    html = environment().get_template("access-requests.html").render(
        mine=AR.list_requests(world, AR.Actor("admin2"), mine=True), to_decide=to_decide, done="", done_id="",
        error={"id": rid, "action": "deny", "message": "a reason for the denial is required"},
        form={"mode": "", "expires": "", "reason": "  "}, **PAGE_NS)
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    assert f'action="/services/vre/access-requests/{rid}/approve"' in html
    assert html.count("a reason for the denial is required") == 1 and 'id="no-requests"' in html
    html = environment().get_template("access-requests.html").render(
        mine=AR.list_requests(world, AR.Actor("bob"), mine=True), to_decide=None, done="requested", done_id=rid,
        **PAGE_NS)
    assert f"Access request #{rid} sent" in html and "Requests to decide" not in html and "withdraw" in html


def test_a_change_made_meanwhile_is_a_conflict_that_says_so(world):
    """Two deciders on one request: the one who commits second gets the module's clear error
    (``vdb.versioned_scope`` turns the row's version mismatch into it), nothing half-applied."""
    r = ask(world)
    with pytest.raises(AR.Decided, match="same moment"):
        with AR._tx(world) as db:
            db.get(vdb.AccessRequest, r["id"]).reason = "the slower decider"
            with vdb.session_scope(world.vre_db_url) as other:  # the other decider commits first
                other.get(vdb.AccessRequest, r["id"]).reason = "the quicker decider"
    with vdb.session_scope(world.vre_db_url) as db:
        assert db.get(vdb.AccessRequest, r["id"]).reason == "the quicker decider"


def test_a_dataset_with_open_requests_is_not_retired(world):
    """Retiring would drop an open request unanswered (and its row with the dataset's): refused
    until it is decided; after a decision the dataset retires."""
    from vre.catalog import registry
    from vre.errors import Conflict

    asked = ask(world)
    with vdb.session_scope(world.vre_db_url) as db, pytest.raises(Conflict, match=f"#{asked['id']} \\(prostate-ai\\)"):
        registry.remove_dataset(db, world, "lung-ct")
    AR.deny(world, AR.Actor("admin2"), asked["id"], reason="not for this study")
    with vdb.session_scope(world.vre_db_url) as db:
        registry.remove_dataset(db, world, "lung-ct")
    with vdb.session_scope(world.vre_db_url) as db:
        assert db.scalars(select(vdb.Dataset).where(vdb.Dataset.slug == "lung-ct")).first() is None


def test_a_decided_request_outlives_its_datasets_retirement(world):
    """Retiring a dataset keeps its decided requests (they were deleted with it): the requester and
    the deciders still list them under the slug they kept, marked retired; a decision stays final;
    the slug registered again is a new dataset, asked for afresh."""
    from vre.api.pages import environment
    from vre.catalog import registry

    denied = ask(world)
    AR.deny(world, AR.Actor("stewart"), denied["id"], reason="not for this study")
    withdrawn = ask(world, who="alice", project="lung-screening")
    AR.withdraw(world, AR.Actor("alice"), withdrawn["id"])
    with vdb.session_scope(world.vre_db_url) as db:
        registry.remove_dataset(db, world, "lung-ct")

    everything = {r["id"]: r for r in AR.list_requests(world)}
    for rid, state in ((denied["id"], "denied"), (withdrawn["id"], "withdrawn")):
        r = everything[rid]
        assert (r["dataset"], r["dataset_retired"], r["dataset_title"], r["state"]) == ("lung-ct", True, "", state)
    assert everything[denied["id"]]["reason"] == "not for this study"
    assert everything[denied["id"]]["decided_by"] == "stewart"
    mine = AR.list_requests(world, AR.Actor("bob"), mine=True)
    assert [(r["id"], r["dataset"]) for r in mine] == [(denied["id"], "lung-ct")]
    # the stewardship went with the dataset: stewart no longer decides (nor sees) its requests
    assert AR.list_requests(world, AR.Actor("stewart")) == []
    assert denied["id"] in [r["id"] for r in AR.list_requests(world, AR.Actor("admin2"))]
    with pytest.raises(AR.Decided, match="already denied by stewart"):
        AR.approve(world, AR.Actor("admin2"), denied["id"])
    html = environment().get_template("access-requests.html").render(
        mine=mine, to_decide=None, done="", done_id="", **PAGE_NS)
    assert "dataset retired" in html and "<code>lung-ct</code>" in html
    with vdb.session_scope(world.vre_db_url) as db:
        row = db.get(vdb.AccessRequest, denied["id"])
        assert (row.dataset_id, row.dataset_slug) == (None, "lung-ct")
        db.add(vdb.Dataset(slug="lung-ct", title="Lung CT again", path="/srv/secret/lung2", catalog=LUNG))
    again = ask(world)
    assert (again["dataset_retired"], again["dataset_title"]) == (False, "Lung CT again")
    listed = {r["id"]: r["dataset_retired"] for r in AR.list_requests(world)}
    assert listed[denied["id"]] is True and listed[again["id"]] is False


def test_an_open_request_whose_dataset_is_gone_is_not_decided_but_withdrawn(world):
    """Retiring refuses while a request is open, but one opened at that very moment loses its
    dataset: nobody can grant it (it is not offered to decide), its requester withdraws it."""
    from vre.errors import Conflict

    req = ask(world)
    with vdb.session_scope(world.vre_db_url) as db:  # as the foreign key's ON DELETE SET NULL would
        db.get(vdb.AccessRequest, req["id"]).dataset_id = None
    assert AR.to_decide(world, AR.Actor("admin2")) == []
    with pytest.raises(Conflict, match="dataset 'lung-ct' was retired: access request .* can no longer be decided"):
        AR.approve(world, AR.Actor("admin2"), req["id"])
    assert AR.withdraw(world, AR.Actor("bob"), req["id"])["state"] == "withdrawn"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_from_0013_keeps_requests_and_fills_their_slug(backend, request, tmp_path):
    """0014 rebuilds access_requests (SQLite) to change the dataset's foreign key: every request is
    kept with its dataset's slug, retiring a dataset then keeps its requests, and the partial unique
    index still allows one open request per pair (and any number of decided ones)."""
    from vre.catalog import registry
    from vre.errors import Conflict

    url = f"sqlite:///{tmp_path / 'vre.sqlite'}" if backend == "sqlite" else request.getfixturevalue("postgres").new_database()
    vdb.upgrade(url, "0013")
    with vdb.session_scope(url) as db:  # the other tables are as at head
        add_account(db, "ann", password="ann-password-1")
        db.add(vdb.Dataset(slug="old-ct", title="Old", path="/srv/old", catalog={}))
        db.add(vdb.Dataset(slug="old-mr", title="Old MR", path="/srv/mr", catalog={}))
        db.flush()
        P.create_project(db, "old", "Old")
        P.add_member(db, "old", "ann")
    now = "2026-12-01 10:00:00+00:00"
    with vdb.engine_for(url).begin() as conn:
        for dataset, state in (("old-ct", "denied"), ("old-ct", "open"), ("old-mr", "withdrawn")):
            conn.execute(text("INSERT INTO access_requests (project_id, dataset_id, requester_id, mode, "
                              "justification, intended_use, state, created_at, reason, rev) SELECT p.id, d.id, a.id, "
                              "'interactive', :why, :use, :state, :t, '', 1 FROM projects p, datasets d, accounts a "
                              "WHERE d.slug = :dataset"),
                         {"why": WHY, "use": USE, "state": state, "t": now, "dataset": dataset})
    vdb.upgrade(url)
    settings = Settings(state_dir=tmp_path / "state", db_url=url)
    before = [(r["dataset"], r["state"], r["dataset_retired"]) for r in AR.list_requests(settings)]
    assert before == [("old-mr", "withdrawn", False), ("old-ct", "open", False), ("old-ct", "denied", False)]
    with pytest.raises(VREError, match="already has an open request"):
        ask(settings, who="ann", project="old", dataset="old-ct")
    with pytest.raises(Exception), vdb.engine_for(url).begin() as conn:  # the index itself, not just the check
        conn.execute(text("INSERT INTO access_requests (project_id, dataset_id, dataset_slug, requester_id, mode, "
                          "justification, intended_use, state, created_at, reason, rev) SELECT project_id, "
                          "dataset_id, dataset_slug, requester_id, mode, justification, intended_use, state, "
                          "created_at, reason, 1 FROM access_requests WHERE state = 'open'"))
    second = ask(settings, who="ann", project="old", dataset="old-mr")  # after a withdrawn one
    AR.deny(settings, AR.Actor.cli(None), second["id"], reason="not now")
    with vdb.session_scope(url) as db, pytest.raises(Conflict, match="open access requests"):
        registry.remove_dataset(db, settings, "old-ct")
    with vdb.engine_for(url).begin() as conn:  # the foreign key's own ON DELETE (remove_dataset also nulls it)
        conn.execute(text("DELETE FROM datasets WHERE slug = 'old-mr'"))
    after = [(r["dataset"], r["state"], r["dataset_retired"]) for r in AR.list_requests(settings)]
    assert after == [("old-mr", "denied", True)] + [("old-mr", "withdrawn", True)] + before[1:]


def test_a_grant_made_meanwhile_makes_the_approval_a_conflict_that_says_so(world, monkeypatch):
    """An admin grants the dataset (``vre project grant``) while a steward approves the request for it:
    the grants' unique constraint refuses the second; the approver is told to reload, not shown a 500."""
    from vre.errors import Conflict

    req = ask(world)
    real = P.grant

    def late(db, project, dataset, **kw):
        P.get_project(db, project).grants  # the approval's check ran: no grant yet
        with vdb.session_scope(world.vre_db_url) as other:
            real(other, project, dataset)
        return real(db, project, dataset, **kw)
    monkeypatch.setattr(P, "grant", late)
    with pytest.raises(Conflict, match=f"access request {req['id']}: the project's grants were changed at the same "
                                       "moment by someone else; reload the page and decide again"):
        AR.approve(world, AR.Actor("stewart"), req["id"])
    assert AR.list_requests(world, open_only=True)[0]["id"] == req["id"]  # still open: nothing half-applied
    assert [a for a, *_ in events(world)] == ["access_request.create"]


def test_a_steward_does_not_decide_for_their_own_project_and_a_decision_rechecks_the_asker(world):
    """A data holder who is a member of the asking project has an interest: an admin decides.
    What made the request admissible (an active member asking, a project not expired) must still
    hold when it is approved; the decision records as what its decider acted."""
    from vre.errors import Conflict

    with vdb.session_scope(world.vre_db_url) as db:
        P.add_member(db, "prostate-ai", "stewart")
    req = ask(world)
    with pytest.raises(AR.Forbidden, match="not for a project they are a member of"):
        AR.approve(world, AR.Actor("stewart"), req["id"])
    assert req["id"] not in [r["id"] for r in AR.list_requests(world, AR.Actor("stewart"))]
    with vdb.session_scope(world.vre_db_url) as db:
        P.remove_member(db, "prostate-ai", "bob")
    with pytest.raises(Conflict, match="bob is no longer an active member of project 'prostate-ai'"):
        AR.approve(world, AR.Actor("admin2"), req["id"])
    with vdb.session_scope(world.vre_db_url) as db:
        P.add_member(db, "prostate-ai", "bob")
        P.remove_member(db, "prostate-ai", "stewart")
    out = AR.approve(world, AR.Actor("stewart"), req["id"])
    assert out["state"] == "approved"
    decided = [e for e in events(world) if e[0] == "access_request.approve" and e[1] == "ok"]
    assert decided and decided[-1][5].get("as") == "steward"
