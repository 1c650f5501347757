"""Grant modes and grant expiry: what a session, a shared and a held batch worker of the same project mount, the
plan cache following a change of mode or an expiry, the rules and the migration. On SQLite and
PostgreSQL."""

import datetime as dt
import time

import pytest
from sqlalchemy import select, text

from vre import db as vdb
from vre import projects as P
from vre.accounts import add_account
from vre.errors import VREError
from vre.plan import PlanCache, build_plan
from vre.settings import Settings


def _soon(seconds: float) -> str:
    return (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)).isoformat()


@pytest.fixture
def world(db_url, tmp_path):
    """Project ``lung`` (member ann) with ``open-ct`` interactive and ``batch-ct`` batch-only."""
    settings = Settings(state_dir=tmp_path / "state", db_url=db_url)
    with vdb.session_scope(db_url) as db:
        add_account(db, "ann", password="ann-password-1")
        for slug in ("open-ct", "batch-ct", "late-ct"):
            db.add(vdb.Dataset(slug=slug, title=slug, path=str(tmp_path / slug), catalog={"title": f"{slug} record"}))
        P.create_project(db, "lung", "Lung")
        db.flush()
        P.grant(db, "lung", "open-ct")
        P.grant(db, "lung", "batch-ct", mode="batch-only")
        P.add_member(db, "lung", "ann")
        P.set_profile(db, "lung", "small", cpu=0.5, memory="1G")
    return settings


def plan(settings, role="session", cache=None):
    with vdb.session_scope(settings.vre_db_url) as db:
        if cache is not None:
            return cache.get(db, settings, "ann", "lung", None, role=role)
        return build_plan(db, settings, "ann", "lung", None, role=role)


def data_targets(p) -> set[str]:
    return {m.target for m in p.mounts if m.kind in ("dataset", "catalog")}


def test_a_session_mounts_interactive_grants_and_lists_batch_only_ones_as_records(world):
    p = plan(world)
    assert p.datasets == ("open-ct",) and p.env["VRE_DATASETS"] == "open-ct"
    assert data_targets(p) == {"/data/open-ct", "/opt/vre/catalog/open-ct"}
    manifest = p.manifest()
    assert [d["slug"] for d in manifest["datasets"]] == ["open-ct"]
    assert manifest["catalogue_only"] == [{"slug": "batch-ct", "mode": "batch-only",
                                           "record": {"title": "batch-ct record"}}]


def test_a_shared_worker_mounts_what_sessions_mount(world):
    """The project's shared workers take any member's Dask calls (their island is the sessions'):
    batch-only files in them would be one ``Client.run`` away from a session."""
    p = plan(world, role="worker")
    assert p.datasets == ("open-ct",) and p.pool == "lung" and p.network.endswith("-lung")
    worker = p.for_worker("lung-worker-1", cpu=1, mem_mb=1024, gpus=0)
    assert data_targets(worker) == {"/data/open-ct", "/opt/vre/catalog/open-ct"}
    assert worker.mount("/home/jovyan/project").readonly is False
    assert "held" not in {m.kind for m in worker.mounts}


def test_a_held_worker_mounts_batch_only_grants_in_an_island_of_its_own(world):
    p = plan(world, role="held")
    assert p.datasets == ("batch-ct", "open-ct") and p.catalogue_only == ()
    session = plan(world)
    assert p.pool == "lung.held" and p.network != session.network and p.network.endswith("-lung.held")
    worker = p.for_worker("lung.held-worker-1", cpu=1, mem_mb=1024, gpus=0)
    assert {"/data/batch-ct", "/data/open-ct"} <= data_targets(worker)
    mounts = {m.target: m for m in worker.mounts}
    # no workspace (a live folder sessions write is a channel back to them, even read-only: its
    # code is copied at submission); its own home; its folder outside the workspace
    assert not any(m.kind == "workspace" for m in worker.mounts) and "VRE_WORKSPACE" not in worker.env
    assert mounts["/home/jovyan"].source == world.projects_dir / "lung" / "held-home"
    assert (mounts["/held"].source, mounts["/held"].readonly, mounts["/held"].kind) == (
        world.projects_dir / "lung" / "held", False, "held")
    assert not any(m.kind == "held" for m in session.mounts)
    assert worker.env["VRE_LANE"] == "held" and worker.run_dir.parent.parent.name == "lung.held"
    scheduler = p.for_scheduler("lung.held-scheduler", world.run_dir / "bell" / "sock")
    assert scheduler.datasets == () and "/held" not in {m.target for m in scheduler.mounts}
    assert not any(m.kind == "workspace" for m in scheduler.mounts)
    assert scheduler.network == p.network and scheduler.pool == "lung.held"


def test_an_expired_grant_mounts_nowhere_and_is_shown_expired(world):
    with vdb.session_scope(world.vre_db_url) as db:
        P.grant(db, "lung", "late-ct", expires=_soon(3600))
        g = P._grant_of(P.get_project(db, "lung"), P.get_dataset(db, "late-ct"))
        assert P.describe_grant(g).startswith("late-ct (until ")
        g.expires_at = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)  # as time passing does
        assert P.describe_grant(g) == "late-ct (expired)" and P.grant_summary(g)["expired"] is True
    for role in ("session", "worker", "held"):
        p = plan(world, role)
        assert "late-ct" not in p.datasets and "/data/late-ct" not in data_targets(p)
        assert "late-ct" not in dict(p.catalogue_only)


def test_the_plan_cache_follows_a_change_of_mode_and_an_expiry(world):
    cache = PlanCache()
    assert plan(world, cache=cache).datasets == ("open-ct",)
    with vdb.session_scope(world.vre_db_url) as db:
        before = db.scalar(select(vdb.PlanGeneration.n))
        P.update_grant(db, "lung", "batch-ct", mode="interactive")
    with vdb.session_scope(world.vre_db_url) as db:
        assert db.scalar(select(vdb.PlanGeneration.n)) > before  # the change moved the generation on
    assert plan(world, cache=cache).datasets == ("batch-ct", "open-ct")
    with vdb.session_scope(world.vre_db_url) as db:
        P.update_grant(db, "lung", "batch-ct", expires=_soon(1.5))
    assert plan(world, cache=cache).datasets == ("batch-ct", "open-ct")   # cached until the expiry
    assert plan(world, "held", cache=cache).datasets == ("batch-ct", "open-ct")
    time.sleep(2)  # nothing in the database changes: the clock alone must end the cached plans
    assert plan(world, cache=cache).datasets == ("open-ct",)
    assert plan(world, "held", cache=cache).datasets == ("open-ct",)


@pytest.mark.parametrize("call, fragment", [
    (lambda db: P.grant(db, "lung", "late-ct", mode="batch"), "use one of interactive, batch-only"),
    (lambda db: P.grant(db, "lung", "late-ct", expires="2020-01-01"), "is in the past"),
    (lambda db: P.grant(db, "lung", "late-ct", expires="soon"), "invalid expiry"),
    (lambda db: P.grant(db, "lung", "open-ct", mode="batch-only"), "vre project update-grant lung open-ct"),
    (lambda db: P.update_grant(db, "lung", "late-ct", mode="batch-only"), "grant it first"),
    (lambda db: P.update_grant(db, "lung", "open-ct"), "nothing to change"),
    (lambda db: P.update_grant(db, "lung", "open-ct", mode="offline"), "use one of interactive, batch-only"),
    (lambda db: P.update_grant(db, "lung", "open-ct", expires="2001-02-03T04:05:06Z"), "revoke it"),
])
def test_grant_rules_say_what_to_fix(world, call, fragment):
    with pytest.raises(VREError, match=fragment), vdb.session_scope(world.vre_db_url) as db:
        call(db)


def test_update_grant_changes_only_what_is_given(world):
    with vdb.session_scope(world.vre_db_url) as db:
        g = P.update_grant(db, "lung", "batch-ct", expires="2099-06-30")
        assert (g.mode, g.expires_at) == ("batch-only", dt.datetime(2099, 7, 1, tzinfo=dt.timezone.utc))
        g = P.update_grant(db, "lung", "batch-ct", mode="interactive")
        assert (g.mode, g.expires_at.year) == ("interactive", 2099)
        assert P.update_grant(db, "lung", "batch-ct", expires="never").expires_at is None


# --- the migration -------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_makes_existing_grants_interactive_without_expiry(backend, request, tmp_path):
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'vre.sqlite'}"
    else:
        url = request.getfixturevalue("postgres").new_database()
    vdb.upgrade(url, "0009")
    now = "2026-12-01 10:00:00+00:00"
    with vdb.engine_for(url).begin() as conn:
        conn.execute(text("INSERT INTO datasets (id, slug, title, path, catalog, registered_at) "
                          "VALUES (1, 'old-ct', 'Old', '/srv/old', '{}', :t)"), {"t": now})
        conn.execute(text("INSERT INTO projects (id, slug, title, description, created_at) "
                          "VALUES (1, 'old', 'Old', '', :t)"), {"t": now})
        conn.execute(text("INSERT INTO grants (project_id, dataset_id, granted_at) VALUES (1, 1, :t)"), {"t": now})
    vdb.upgrade(url)
    with vdb.session_scope(url) as db:
        g = db.scalar(select(vdb.Grant))
        assert (g.dataset.slug, g.mode, g.expires_at) == ("old-ct", "interactive", None)
        assert g.mounts_in("session") and g.mounts_in("worker")


def test_the_sessions_datasets_api_lists_batch_only_grants_as_records_without_files(world, tmp_path):
    """What the Lab's Datasets panel shows, from the manifest the hub writes into the session."""
    import json

    from vre_session.datasets import BATCH_ONLY_NOTE, Datasets, NotFound, load_manifest

    path = tmp_path / "session.json"
    path.write_text(json.dumps(plan(world).manifest()))
    datasets = Datasets(load_manifest(str(path)))
    summary = {d["slug"]: d for d in datasets.summary()}
    assert summary["open-ct"]["mode"] == "interactive" and summary["open-ct"]["path"] == "/data/open-ct"
    assert summary["batch-ct"] == {"slug": "batch-ct", "path": None, "browse_path": None, "indexed": False,
                                   "record": {"title": "batch-ct record"}, "mode": "batch-only",
                                   "note": BATCH_ONLY_NOTE}
    with pytest.raises(NotFound, match="batch-only in this project: its files are available to batch jobs"):
        datasets.get("batch-ct")
    assert datasets.slug_of("/data/batch-ct/x.dcm") is None   # no file of it is the session's


def test_the_home_page_says_which_grants_are_batch_only_or_expired(world):
    from vre.hubpages import home_projects

    with vdb.session_scope(world.vre_db_url) as db:
        P.grant(db, "lung", "late-ct", expires=_soon(3600))
        P.get_project(db, "lung").grants[-1].expires_at = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    datasets = {d["slug"]: d for d in home_projects(world, "ann")[0]["datasets"]}
    assert [(d["mode"], d["expired"]) for d in datasets.values()] == [
        ("batch-only", False), ("interactive", True), ("interactive", False)]
    assert datasets["late-ct"]["until"] == "2020-01-01 00:00 UTC"
