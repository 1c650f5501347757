"""Project service and SessionPlan: the policy every backend renders, on SQLite and PostgreSQL."""

import datetime as dt

import pytest

from vre import db as vdb
from vre import projects as P
from vre.accounts import add_account
from vre.errors import VREError
from vre.plan import THREAD_VARS, Mount, PlanRefused, build_plan
from vre.settings import Settings


@pytest.fixture
def world(db_url, tmp_path):
    """Two projects, two datasets, three people."""
    settings = Settings(state_dir=tmp_path / "state", db_url=db_url)
    with vdb.session_scope(db_url) as db:
        for name in ("ann", "ben"):
            add_account(db, name, password=f"{name}-password-1")
        add_account(db, "aud", role="auditor", password="aud-password-1")
        for slug in ("lung-ct", "prostate-mr"):
            db.add(vdb.Dataset(slug=slug, title=slug, path=str(tmp_path / slug), catalog={}))
        P.create_project(db, "lung", "Lung")
        P.create_project(db, "prostate", "Prostate")
        db.flush()
        P.grant(db, "lung", "lung-ct")
        P.grant(db, "prostate", "prostate-mr")
        P.add_member(db, "lung", "ann")
        P.add_member(db, "prostate", "ben")
        P.set_profile(db, "lung", "large", cpu=4, memory="8G")
        P.set_profile(db, "lung", "small", cpu=0.5, memory="1G")
        P.set_profile(db, "prostate", "gpu", cpu=2, memory="8G", gpus=1)
    return settings


def plan(settings, user, project, profile=None):
    with vdb.session_scope(settings.vre_db_url) as db:
        return build_plan(db, settings, user, project, profile)


def test_plan_contents(world, tmp_path):
    p = plan(world, "ann", "lung")
    assert p.profile == "small"  # smallest profile is the default
    assert (p.cpu, p.mem_mb, p.gpus, p.threads) == (0.5, 1024, 0, 1)
    mounts = {m.target: (m.source, m.readonly) for m in p.mounts}
    assert mounts["/data/lung-ct"] == (tmp_path / "lung-ct", True)
    assert mounts["/opt/vre/catalog/lung-ct"][1] is True
    assert mounts["/home/jovyan"] == (world.projects_dir / "lung" / "homes" / "ann", False)
    assert mounts["/home/jovyan/project"] == (world.projects_dir / "lung" / "workspace", False)
    assert not any("prostate" in str(m.source) or "prostate" in m.target for m in p.mounts)
    assert p.network == "vre-lung" and p.session_id == "ann-lung"
    assert p.env["OMP_NUM_THREADS"] == "1" and p.env["VRE_DATASETS"] == "lung-ct"
    assert p.uid >= world.uid_base and p.gid >= world.gid_base


def test_plan_profile_selects_within_project(world):
    assert plan(world, "ann", "lung", "large").cpu == 4
    with pytest.raises(PlanRefused, match="no profile 'gpu'"):
        plan(world, "ann", "lung", "gpu")  # another project's profile


@pytest.mark.parametrize("user, project, fragment", [
    ("ann", "prostate", "not a member"),
    ("ann", "nonexistent", "not a member"),  # same answer: project names are not disclosed
    ("ann", "", "choose a project"),
    ("zed", "lung", "has no VRE account"),
    ("aud", "lung", "not a member"),
])
def test_plan_refusals(world, user, project, fragment):
    with pytest.raises(PlanRefused, match=fragment):
        plan(world, user, project)


def test_expiry_and_membership_changes_take_effect(world):
    with vdb.session_scope(world.vre_db_url) as db:
        P.set_expiry(db, "lung", (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)).isoformat())
    with pytest.raises(PlanRefused, match="expired"):
        plan(world, "ann", "lung")
    with vdb.session_scope(world.vre_db_url) as db:
        P.set_expiry(db, "lung", "never")
        P.remove_member(db, "lung", "ann")
    with pytest.raises(PlanRefused, match="not a member"):
        plan(world, "ann", "lung")


def test_revoked_dataset_leaves_the_plan(world):
    with vdb.session_scope(world.vre_db_url) as db:
        P.revoke(db, "lung", "lung-ct")
    assert plan(world, "ann", "lung").datasets == ()


def test_disabled_account_is_refused(world):
    with vdb.session_scope(world.vre_db_url) as db:
        db.query(vdb.Account).filter_by(name="ann").one().disabled = True
    with pytest.raises(PlanRefused, match="disabled"):
        plan(world, "ann", "lung")


def test_a_profiles_node_selector_reaches_the_plan(world):
    with vdb.session_scope(world.vre_db_url) as db:
        pr = P.set_profile(db, "prostate", "h200", cpu=2, memory="8G", gpus=1,
                           node_selector=["nvidia.com/gpu.product=NVIDIA-H200", "zone = a"])
        assert pr.describe() == "2 CPU, 8 GiB RAM, 1 GPU, on nvidia.com/gpu.product=NVIDIA-H200,zone=a"
        for bad, fragment in ((["gpu"], "write LABEL=VALUE"), (["Bad Label=x"], "not a node label name"),
                              (["gpu.product=H200 SXM"], "a label value is")):
            with pytest.raises(VREError, match=fragment):
                P.set_profile(db, "prostate", "bad", cpu=1, memory="1G", node_selector=bad)
    assert plan(world, "ben", "prostate", "h200").node_selector == (
        ("nvidia.com/gpu.product", "NVIDIA-H200"), ("zone", "a"))
    assert plan(world, "ben", "prostate", "gpu").node_selector == ()
    with vdb.session_scope(world.vre_db_url) as db:  # set again without: cleared
        assert P.set_profile(db, "prostate", "h200", cpu=2, memory="8G", gpus=1).node_selector is None


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_leaves_existing_profiles_without_node_selector(backend, request, tmp_path):
    from sqlalchemy import select, text

    url = f"sqlite:///{tmp_path / 'vre.sqlite'}" if backend == "sqlite" else \
        request.getfixturevalue("postgres").new_database()
    vdb.upgrade(url, "0011")
    with vdb.engine_for(url).begin() as conn:
        conn.execute(text("INSERT INTO projects (id, slug, title, description, created_at) "
                          "VALUES (1, 'old', 'Old', '', '2026-12-01 10:00:00+00:00')"))
        conn.execute(text("INSERT INTO profiles (project_id, name, description, cpu, mem_mb, gpus) "
                          "VALUES (1, 'small', '', 1, 1024, 0)"))
    vdb.upgrade(url)
    with vdb.session_scope(url) as db:
        profile = db.scalar(select(vdb.Profile))
        assert (profile.name, profile.node_selector, profile.describe()) == ("small", None, "1 CPU, 1 GiB RAM")


def test_project_without_profiles_is_refused(world):
    with vdb.session_scope(world.vre_db_url) as db:
        P.create_project(db, "empty", "Empty")
        P.add_member(db, "empty", "ann")
    with pytest.raises(PlanRefused, match="no resource profile"):
        plan(world, "ann", "empty")


@pytest.mark.parametrize("call, fragment", [
    (lambda db: P.create_project(db, "lung", "Again"), "slug 'lung' is taken"),
    (lambda db: P.create_project(db, "x", "Too short"), "invalid project slug"),
    (lambda db: P.create_project(db, "new-one", "  "), "needs a --title"),
    (lambda db: P.grant(db, "lung", "lung-ct"), "already has dataset"),
    (lambda db: P.grant(db, "nope", "lung-ct"), "unknown project 'nope'"),
    (lambda db: P.grant(db, "lung", "nope"), "unknown dataset 'nope'"),
    (lambda db: P.revoke(db, "lung", "prostate-mr"), "has no grant"),
    (lambda db: P.add_member(db, "lung", "ann"), "already a member"),
    (lambda db: P.add_member(db, "lung", "aud"), "auditors review projects"),
    (lambda db: P.add_member(db, "lung", "zed"), "unknown user 'zed'"),
    (lambda db: P.remove_member(db, "lung", "ben"), "not a member"),
    (lambda db: P.set_profile(db, "lung", "x", cpu=0, memory="1G"), "invalid cpu"),
    (lambda db: P.set_profile(db, "lung", "x", cpu=1, memory="100M"), "too small"),
    (lambda db: P.set_profile(db, "lung", "x", cpu=1, memory="lots"), "invalid memory"),
    (lambda db: P.set_profile(db, "lung", "X!", cpu=1, memory="1G"), "invalid profile name"),
    (lambda db: P.set_profile(db, "lung", "x", cpu=1, memory="1G", gpus=-1), "invalid gpus"),
    (lambda db: P.remove_profile(db, "lung", "nope"), "has no profile 'nope'"),
    (lambda db: P.set_expiry(db, "lung", "next tuesday"), "invalid expiry"),
])
def test_bad_input_is_explained(world, call, fragment):
    with vdb.session_scope(world.vre_db_url) as db, pytest.raises(VREError) as e:
        call(db)
    assert fragment in str(e.value)


def test_parse_helpers():
    assert P.parse_memory("4G") == 4096 and P.parse_memory("512M") == 512 and P.parse_memory("1.5GiB") == 1536
    day = P.parse_expiry("2027-06-30")
    assert day == dt.datetime(2027, 7, 1, tzinfo=dt.timezone.utc)  # valid through that day
    assert P.parse_expiry("never") is None
    assert P.parse_expiry("2027-06-30T12:00:00Z").tzinfo is not None


def test_session_plan_carries_every_mount_and_the_base_environment(world):
    """What a session may touch is the plan's answer alone: the runtime mounts are in it too."""
    p = plan(world, "ann", "lung")
    run = world.sessions_run_dir / "ann-lung"
    assert p.run_dir == run
    by_target = {m.target: m for m in p.mounts}
    assert by_target["/etc/vre/session.json"] == Mount(run / "session.json", "/etc/vre/session.json", True, "file")
    assert by_target["/etc/passwd"].source == run / "passwd" and by_target["/etc/group"].readonly
    assert by_target["/run/vre/hub"] == Mount(world.hub_socket_dir, "/run/vre/hub", True, "hub")
    assert by_target["/run/vre/session"] == Mount(run / "sock", "/run/vre/session", False, "private")
    assert by_target["/run/vre/spool"] == Mount(run / "spool", "/run/vre/spool", False, "private")
    # writable: exactly home, workspace, the server's socket directory and the audit spool
    assert sorted(m.target for m in p.mounts if not m.readonly) == [
        "/home/jovyan", "/home/jovyan/project", "/run/vre/session", "/run/vre/spool"]
    # one thread rule (ceil of the CPU grant) for every pool, and the relay's endpoint
    assert {p.env[v] for v in THREAD_VARS} == {"1"} and p.manifest()["threads"] == 1
    assert p.env["VRE_SESSION"] == "/etc/vre/session.json"
    assert p.env["VRE_AUDIT_URL"].startswith("http+unix://") and p.env["VRE_AUDIT_URL"].endswith("/audit/events")
    # the VRE service (ingest, batch queue) on its socket beside the hub's, never the hub's own
    assert p.env["VRE_AUDIT_URL"] == "http+unix://%2Frun%2Fvre%2Fhub%2Fvre.sock/services/vre/api/audit/events"
    assert p.env["VRE_API_URL"] == "http+unix://%2Frun%2Fvre%2Fhub%2Fvre.sock/services/vre/api"
    assert "VRE_AUDIT_TOKEN" not in p.env  # a per-run credential: the spawner mints it


def test_batch_variants_come_from_the_worker_plan(world):
    with vdb.session_scope(world.vre_db_url) as db:
        base = build_plan(db, world, "ann", "lung", "large", role="worker")
    assert base.uid == world.gid_base + 1 and base.mount("/home/jovyan").source.name == "worker-home"
    worker = base.for_worker("lung-worker-3", cpu=2.5, mem_mb=512, gpus=0)
    assert (worker.session_id, worker.cpu, worker.mem_mb, worker.threads) == ("lung-worker-3", 2.5, 512, 3)
    assert worker.env["OMP_NUM_THREADS"] == "3" and worker.run_dir.name == "lung-worker-3"
    assert {m.target for m in worker.mounts} >= {"/data/lung-ct", "/home/jovyan/project", "/etc/vre/session.json"}
    assert not any(m.kind in ("hub", "private") for m in worker.mounts)  # no hub socket, no session socket
    doorbell = world.run_dir / "doorbell" / "wake.sock"
    sched = base.for_scheduler("lung-scheduler", doorbell)
    assert sched.role == "scheduler" and sched.datasets == ()
    assert not any(m.kind in ("dataset", "catalog") for m in sched.mounts)  # it never runs jobs: no data
    assert sched.mount("/run/vre/doorbell") == Mount(doorbell.parent, "/run/vre/doorbell", True, "hub")
    assert sched.mount("/run/vre/agent").kind == "private"
    assert sched.env["VRE_ENGINE_WAKE"] == "/run/vre/doorbell/wake.sock"
    with pytest.raises(ValueError, match="role='worker'"):
        plan(world, "ann", "lung").for_worker("x", cpu=1, mem_mb=1, gpus=0)


def test_request_log_audits_no_oauth_code_exchange():
    """The VRE service's OAuth login finishes with a POST to the hub's token endpoint: housekeeping
    (the login is ``auth.login``), not an ``api.request`` by the service in every auditor's view."""
    from vre.audit.events import classify_request

    assert classify_request("POST", "/hub/api/oauth2/token", 200, "service") is None
    assert classify_request("POST", "/hub/api/users/bob/tokens", 201, "user") == ("token.create", "user/bob")
    assert classify_request("POST", "/hub/api/groups/x/users", 200, "user")[0] == "api.request"
    # a start the spawn throttle turned away changed nothing; the one that gets through is recorded
    assert classify_request("POST", "/hub/api/users/bob/servers/lung", 429, "user") is None
    assert classify_request("POST", "/hub/api/users/bob/servers/lung", 202, "user") == (
        "api.request", "POST /hub/api/users/bob/servers/lung")
    # a server stopped by a service: culled, unless the VRE service stopped it for an admin
    assert classify_request("DELETE", "/hub/api/users/bob/servers/lung", 204, "service", "idle-culler") == (
        "session.cull", "bob/lung")
    assert classify_request("DELETE", "/hub/api/users/bob/servers/lung", 204, "service", "vre") == (
        "session.stop", "bob/lung")


def test_the_polls_recheck_builds_a_plan_once_until_something_changes(world, monkeypatch):
    """Every poll of every running session asks whether it may go on: answered from the shared
    cache while nothing it is built from changed, and refused at the next poll once it did."""
    import logging
    from types import SimpleNamespace

    from vre import plan as vplan
    from vre.backends import plan_spawner

    monkeypatch.setattr(plan_spawner, "POLL_PLANS", vplan.PlanCache())
    built = []
    real = vplan.build_plan
    monkeypatch.setattr(vplan, "build_plan", lambda *a, **k: built.append(a[2:4]) or real(*a, **k))
    sessions = [SimpleNamespace(settings=world, user=SimpleNamespace(name=u), name=p, user_options={},
                                log=logging.getLogger("test"), _log_name=f"{u}/{p}")
                for u, p in (("ann", "lung"), ("ben", "prostate"))]
    for _ in range(3):   # three polls of both sessions
        assert [plan_spawner.PlanSpawner._refusal(s) for s in sessions] == [None, None]
    assert built == [("ann", "lung"), ("ben", "prostate")]
    with vdb.session_scope(world.vre_db_url) as db:
        P.remove_member(db, "lung", "ann")
    assert "not a member" in plan_spawner.PlanSpawner._refusal(sessions[0])
    assert plan_spawner.PlanSpawner._refusal(sessions[1]) is None
