"""Project administration (vre.project_admin), shared by ``vre project ...`` and the Projects admin
page: admins only (refusals recorded as denied), each change's audit event the same from the CLI
and the web but for who acted and how, the rules' errors; then the page over HTTP (a stand-in for
the hub's auth): the forms, refusals shown with 400/403/404, never a traceback."""

import re

import pytest
import requests
from tornado import web
from tornado.testing import bind_unused_port

from fakehub import FakeHubAuth, named_by_header, served

from vre import access_requests as AR
from vre import db as vdb
from vre import project_admin as PA
from vre import projects as P
from vre.accounts import add_account
from vre.audit import open_store
from vre.audit.events import cli_actor
from vre.errors import NotFound, VREError
from vre.roles import ADMIN_SCOPE
from vre.settings import Settings

WEB = AR.Actor("admin", via="web", client="192.0.2.7")
OPERATOR = AR.Actor.cli(None)


def make_world(db_url, tmp_path):
    """Accounts admin, bob (researcher), aud (auditor); datasets lung-ct and prostate-mri; project lung."""
    settings = Settings(state_dir=tmp_path / "state", db_url=db_url)
    with vdb.session_scope(db_url) as db:
        for name, role in (("bob", "researcher"), ("admin", "admin"), ("aud", "auditor")):
            add_account(db, name, role=role, password=f"{name}-password-1")
        db.add(vdb.Dataset(slug="lung-ct", title="Lung CT", path="/srv/lung", catalog={}))
        db.add(vdb.Dataset(slug="prostate-mri", title="Prostate MR", path="/srv/prostate", catalog={}))
        db.flush()
        P.create_project(db, "lung", "Lung")
    return settings


@pytest.fixture
def world(db_url, tmp_path):
    return make_world(db_url, tmp_path)


def events(settings):
    """(action, actor, outcome, project, dataset, target, client, details), fields not set as None."""
    return [(e["action"], e["actor"], e["outcome"], e["project"] or None, e["dataset"] or None, e["target"] or None,
             e["client"] or None, e["details"]) for e in open_store(settings).query(limit=200)]


def test_web_changes_are_audited_like_the_cli_under_the_admin(world):
    said = PA.grant(world, WEB, "lung", "lung-ct", mode="batch-only", expires="2099-06-30")
    assert said == ("granted 'lung-ct' to 'lung': mounted read-only in new held batch jobs only (sessions list "
                    "its catalogue record; held jobs' outputs leave through the airlock), until 2099-07-01 00:00 UTC")
    assert PA.add_member(world, WEB, "lung", "bob") == "added 'bob' to 'lung'"
    assert PA.set_profile(world, WEB, "lung", "gpu", cpu=2, memory="12G", gpus=1, gpu_shared=True) == \
        "profile 'gpu' of 'lung': 2 CPU, 12 GiB RAM, 1 GPU"
    PA.set_quota(world, WEB, "lung", jobs=3, memory="16G")
    PA.set_airlock_rules(world, WEB, "lung", reviews=1)
    web = [(a, actor, p, d, t, c, det) for a, actor, o, p, d, t, c, det in events(world)]
    assert web == [
        ("project.grant", "admin", "lung", "lung-ct", None, "192.0.2.7",
         {"via": "web", "dataset": "lung-ct", "mode": "batch-only", "expires_at": "2099-07-01T00:00:00+00:00",
          "expired": False}),
        ("project.member_add", "admin", "lung", None, "user/bob", "192.0.2.7", {"via": "web"}),
        ("project.profile_set", "admin", "lung", None, "gpu", "192.0.2.7",
         {"via": "web", "cpu": 2.0, "mem_mb": 12288, "gpus": 1, "gpu_shared": True, "node_selector": {}}),
        ("project.update", "admin", "lung", None, None, "192.0.2.7",
         {"via": "web", "job_quota": {"slots": 3, "cpu": web[3][6]["job_quota"]["cpu"], "mem_mb": 16384,
                                      "gpus": web[3][6]["job_quota"]["gpus"]}}),
        ("airlock.rules", "admin", "lung", None, None, "192.0.2.7", {"via": "web", **web[4][6]}),
    ]
    assert web[4][6]["reviews_required"] == 1
    details = PA.project_details(world, "lung")
    assert (details["members"], details["reviews_required"], details["quota"]["memory"]) == (["bob"], 1, "16G")
    assert [g["mode"] for g in details["grants"]] == ["batch-only"]
    assert [d["slug"] for d in details["grantable"]] == ["prostate-mri"]
    assert details["accounts"] == ["admin"]  # not a member yet; auditors never
    assert details["profiles"][0]["memory"] == "12G"


def test_the_operator_records_what_the_cli_always_recorded(world):
    PA.set_downloads(world, OPERATOR, "lung", "results")
    PA.set_egress_cap(world, OPERATOR, "lung", "2G")
    PA.set_cell_audit(world, OPERATOR, "lung", True)
    assert PA.set_expiry(world, OPERATOR, "lung", "never") == "'lung' no longer expires"
    got = [(a, actor, o, c, det) for a, actor, o, p, d, t, c, det in events(world)]
    assert got == [
        ("project.update", cli_actor(), "ok", None, {"via": "cli", "downloads": "results"}),
        ("project.update", cli_actor(), "ok", None, {"via": "cli", "egress_cap": 2 * 1024**3}),
        ("project.update", cli_actor(), "ok", None, {"via": "cli", "audit_cells": True}),
        ("project.expiry_set", cli_actor(), "ok", None, {"via": "cli", "expires_at": None}),
    ]
    assert all(e["actor_role"] == "admin" for e in open_store(world).query(limit=10))


def test_only_active_admins_change_projects_and_refusals_are_recorded(world):
    for who in (AR.Actor("bob", client="192.0.2.8"), AR.Actor("aud"), AR.Actor("ghost")):
        with pytest.raises(AR.Forbidden, match="not an active admin: only admins change projects"):
            PA.add_member(world, who, "lung", "bob")
    with pytest.raises(AR.Forbidden):
        PA.create(world, AR.Actor("bob"), "mine", "Mine")
    assert PA.project_details(world, "lung")["members"] == []
    assert [p["slug"] for p in PA.list_projects(world)] == ["lung"]
    denied = [(a, actor, o, p, t) for a, actor, o, p, d, t, c, det in events(world)]
    assert denied == [("project.member_add", n, "denied", "lung", "user/bob") for n in ("bob", "aud", "ghost")] + [
        ("project.create", "bob", "denied", "mine", None)]


def test_bad_input_says_what_to_fix_and_changes_nothing(world):
    with pytest.raises(VREError, match="invalid memory '12X'"):
        PA.set_profile(world, WEB, "lung", "big", cpu=2, memory="12X")
    with pytest.raises(NotFound, match="unknown dataset 'nope'"):
        PA.grant(world, WEB, "lung", "nope")
    with pytest.raises(VREError, match="grant expiry '2020-01-01' is in the past"):
        PA.grant(world, WEB, "lung", "lung-ct", expires="2020-01-01")
    with pytest.raises(VREError, match="invalid expiry 'soon'"):
        PA.set_expiry(world, WEB, "lung", "soon")
    with pytest.raises(VREError, match="--reviews must be between 1 and 10"):
        PA.set_airlock_rules(world, WEB, "lung", reviews=0)
    with pytest.raises(NotFound, match="unknown project 'nope'"):
        PA.project_details(world, "nope")
    with pytest.raises(VREError, match="CPU must be a number, not 'two'"):
        PA.number("two", "CPU")
    assert (PA.number(" ", "GPUs", int), PA.number("3", "GPUs", int)) == (None, 3)
    assert events(world) == []
    assert (PA.memory_text(512), PA.memory_text(8192), PA.bytes_text(0), PA.bytes_text(2 * 1024**3)) == \
        ("512M", "8G", "none", "2G")


def test_out_of_range_values_say_what_to_fix_and_change_nothing(world):
    """Values that overflowed in Python or in the database column (before: OverflowError, DataError)."""
    in_range = r"out of range: give a date from 1970-01-01 to 2200-12-31"
    PA.grant(world, WEB, "lung", "prostate-mri")
    for call in (lambda: PA.set_expiry(world, WEB, "lung", "9999-12-31"),
                 lambda: PA.set_expiry(world, WEB, "lung", "0001-01-01T00:00:00+05:00"),
                 lambda: PA.create(world, WEB, "kidney", "Kidney", expires="9999-12-31"),
                 lambda: PA.grant(world, WEB, "lung", "lung-ct", expires="9999-12-31"),
                 lambda: PA.update_grant(world, WEB, "lung", "prostate-mri", expires="9999-12-31")):
        with pytest.raises(VREError, match=in_range):
            call()
    with pytest.raises(VREError, match=r"memory '1000.*' is too large: at most 65536G"):
        PA.set_quota(world, WEB, "lung", memory="1" + "0" * 400)
    with pytest.raises(VREError, match="memory '3000000G' is too large"):
        PA.set_profile(world, WEB, "lung", "big", cpu=2, memory="3000000G")
    for cap in ("1" + "0" * 400, "99999999T"):
        with pytest.raises(VREError, match=r"is too large: at most 1024T \(1 PiB\)"):
            PA.set_egress_cap(world, WEB, "lung", cap)
    with pytest.raises(VREError, match="the project's title is too long: at most 255 characters"):
        PA.create(world, WEB, "kidney", "K" * 256)
    d = PA.project_details(world, "lung")
    assert (d["expires_at"], [(g["dataset"], g["expires_at"]) for g in d["grants"]], d["profiles"], d["egress_cap"]) \
        == (None, [("prostate-mri", None)], [], "none")
    assert [p["slug"] for p in PA.list_projects(world)] == ["lung"]
    assert [e[0] for e in events(world)] == ["project.grant"]  # the first grant only


def racing(monkeypatch, url, name, *args):
    """Make ``P.<name>`` lose a race: this transaction reads what it checks (the project's members
    and grants; whether the slug is taken), then another admin's same change (``args``) commits,
    then this one writes."""
    real = getattr(P, name)

    def late(db, *a, **kw):
        if name == "create_project":
            monkeypatch.setattr(db, "scalar", lambda *q, **k: None)  # its check ran before the other commit
        else:
            project = P.get_project(db, a[0])
            project.members, project.grants  # loaded now: the other's row is not among them
        with vdb.session_scope(url) as other:
            real(other, *args)
        return real(db, *a, **kw)
    monkeypatch.setattr(P, name, late)


@pytest.mark.parametrize("name, args, call, said", [
    ("add_member", ("lung", "bob"), lambda s: PA.add_member(s, WEB, "lung", "bob"),
     "project 'lung' (user/bob) was just changed by someone else at the same moment; reload and try again"),
    ("grant", ("lung", "lung-ct"), lambda s: PA.grant(s, WEB, "lung", "lung-ct"),
     "project 'lung' (dataset 'lung-ct') was just changed by someone else"),
    ("create_project", ("kidney", "Kidney"), lambda s: PA.create(s, WEB, "kidney", "Kidney AI"),
     "project 'kidney' was just changed by someone else"),
])
def test_the_same_change_made_meanwhile_is_a_conflict_that_says_so(world, monkeypatch, name, args, call, said):
    from vre.errors import Conflict

    racing(monkeypatch, world.vre_db_url, name, *args)
    with pytest.raises(Conflict, match=re.escape(said)):
        call(world)
    assert [e for e in events(world) if e[2] == "ok"] == []  # the loser recorded nothing


# --- the page over HTTP -------------------------------------------------------------------------
@pytest.fixture
def site(tmp_path, monkeypatch):
    """The Projects pages served on a loopback port, SQLite; yields (settings, base URL)."""
    from vre.api.admin_projects import handlers
    from vre.api.base import ServiceHandler

    url = f"sqlite:///{tmp_path / 'vre.sqlite'}"
    vdb.upgrade(url)
    settings = make_world(url, tmp_path)
    monkeypatch.setattr(ServiceHandler, "_hub_auth",
                        FakeHubAuth(named_by_header(lambda name: [ADMIN_SCOPE] if name == "admin" else [])))
    sock, port = bind_unused_port()
    with served(lambda: web.Application([(f"/services/vre/{p}", *rest) for p, *rest in handlers(settings)],
                                        cookie_secret=b"x" * 32), sock):
        yield settings, f"http://127.0.0.1:{port}/services/vre/admin/projects"


def post(url, who="admin", **form):
    return requests.post(url, data={"_xsrf": "x", **form}, headers={"X-Test-User": who}, allow_redirects=False,
                         timeout=30)


def get(url, who="admin"):
    return requests.get(url, headers={"X-Test-User": who}, allow_redirects=False, timeout=30)


def test_the_pages_create_change_and_refuse_with_messages(site):
    settings, base = site
    r = get(base)
    assert r.status_code == 200 and 'id="project-lung"' in r.text and 'id="create-form"' in r.text
    r = post(base, slug="kidney-ai", title="Kidney AI", description="", expires="2099-12-31")
    assert r.status_code == 303 and r.headers["Location"].endswith("/admin/projects/kidney-ai?done=create")
    r = get(f"{base}/kidney-ai?done=create")
    assert r.status_code == 200 and "project created" in r.text and "valid until 2100-01-01 00:00 UTC" in r.text
    assert '<option value="lung-ct"' in r.text and '<option value="prostate-mri"' in r.text  # registered ones
    page = f"{base}/kidney-ai"
    assert post(f"{page}/grant", dataset="lung-ct", mode="batch-only", expires="").status_code == 303
    assert post(f"{page}/add-member", user="bob").status_code == 303
    assert post(f"{page}/set-profile", name="standard", cpu="2", memory="8G", gpus="").status_code == 303
    assert post(f"{page}/set-quota", jobs="4", cpu="8", memory="32G", gpus="0").status_code == 303
    assert post(f"{page}/set-airlock-reviews", reviews="1").status_code == 303
    assert post(f"{page}/set-cell-audit", state="on").status_code == 303
    d = PA.project_details(settings, "kidney-ai")
    assert (d["members"], [(g["dataset"], g["mode"]) for g in d["grants"]], d["profiles"][0]["describe"]) == (
        ["bob"], [("lung-ct", "batch-only")], "2 CPU, 8 GiB RAM")
    assert (d["quota"]["slots"], d["quota"]["memory"], d["reviews_required"], d["audit_cells"]) == (4, "32G", 1, True)

    refusals = [  # (form, fields, status, message)
        ("set-profile", dict(name="big", cpu="2", memory="12X"), 400, "invalid memory &#39;12X&#39;"),
        ("set-profile", dict(name="big", cpu="two", memory="4G"), 400, "CPU must be a number"),
        ("grant", dict(dataset="nope", mode="interactive"), 404, "unknown dataset &#39;nope&#39;"),
        ("grant", dict(dataset="prostate-mri", mode="interactive", expires="2020-01-01"), 400, "is in the past"),
        ("set-expiry", dict(expires="next week"), 400, "invalid expiry"),
        ("set-quota", dict(jobs="many"), 400, "jobs at once must be a whole number"),
        ("remove-member", dict(user="aud"), 400, "is not a member"),
        ("set-airlock-reviews", dict(reviews="0"), 400, "between 1 and 10"),
        ("set-airlock-reviews", dict(reviews=""), 400, "reviews per request is required"),
        ("set-profile", dict(name="big", cpu="", memory="4G"), 400, "CPU is required"),
    ]
    for change, fields, status, message in refusals:
        r = post(f"{page}/{change}", **fields)
        assert (r.status_code, message in r.text, "Traceback" in r.text) == (status, True, False), (change, r.text)
    assert 'value="big"' in post(f"{page}/set-profile", name="big", cpu="2", memory="12X").text  # kept
    out_of_range = [  # values that overflowed (500) before
        ("set-expiry", dict(expires="9999-12-31"), "is out of range: give a date from 1970-01-01 to 2200-12-31"),
        ("grant", dict(dataset="prostate-mri", mode="interactive", expires="0001-01-01T00:00:00+05:00"),
         "is out of range"),
        ("set-quota", dict(memory="1" + "0" * 400), "is too large: at most 65536G (64 TiB)"),
        ("set-profile", dict(name="big", cpu="2", memory="3000000G"), "is too large: at most 65536G"),
        ("set-egress-cap", dict(cap="99999999T"), "is too large: at most 1024T (1 PiB)"),
        ("set-profile", dict(name="big", cpu="2", memory="4G", description="d" * 256),
         "the profile&#39;s description is too long: at most 255 characters"),
    ]
    for change, fields, message in out_of_range:
        r = post(f"{page}/{change}", **fields)
        assert (r.status_code, message in r.text, "Traceback" in r.text) == (400, True, False), (change, r.text)
    r = post(base, slug="long-title", title="T" * 256)
    assert r.status_code == 400 and "title is too long: at most 255 characters (you wrote 256)" in r.text
    r = post(base, slug="Bad Slug", title="x")
    assert r.status_code == 400 and "invalid project slug" in r.text and 'value="Bad Slug"' in r.text
    r = get(f"{base}/nope")
    assert r.status_code == 404 and "unknown project &#39;nope&#39;" in r.text
    assert post(f"{base}/nope/add-member", user="bob").status_code == 404

    for r in (get(base, "bob"), post(f"{page}/add-member", "bob", user="aud"), post(base, "bob", slug="x-y-z")):
        assert r.status_code == 403
    assert PA.project_details(settings, "kidney-ai")["members"] == ["bob"]
    ok = [(e["action"], e["details"]["via"], e["client"]) for e in open_store(settings).query(limit=100)
          if e["project"] == "kidney-ai" and e["outcome"] == "ok"]
    assert [a for a, *_ in ok] == ["project.create", "project.grant", "project.member_add", "project.profile_set",
                                   "project.update", "airlock.rules", "project.update"]
    assert {(via, client) for _, via, client in ok} == {("web", "127.0.0.1")}
