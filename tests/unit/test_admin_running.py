"""What runs now, for the Users admin page (vre.admin_running, vre.resource_use): the open jobs and
their cancellation (shared with ``vre jobs cancel``), the rule and record of an admin stopping a
session, CPU and memory read from a real cgroup (root only), "unknown" where the backend cannot
say, and the page's template with all of it."""

import os
import subprocess
import sys
import time

import pytest

from vre import access_requests as AR
from vre import admin_running, resource_use
from vre import db as vdb
from vre.accounts import add_account
from vre.audit import open_store
from vre.backends.cgroups import CgroupError, SessionCgroup
from vre.errors import NotFound
from vre.jobs.service import JobRejected
from vre.settings import Settings

WEB = AR.Actor("admin", via="web", client="192.0.2.7")


@pytest.fixture
def world(db_url, tmp_path):
    settings = Settings(state_dir=tmp_path / "state", run_dir=tmp_path / "run", db_url=db_url)
    with vdb.session_scope(db_url) as db:
        for name, role in (("bob", "researcher"), ("admin", "admin")):
            add_account(db, name, role=role, password=f"{name}-password-1")
        project = vdb.Project(slug="lung", title="Lung")
        bob = db.query(vdb.Account).filter_by(name="bob").one()
        for state, worker in (("queued", ""), ("running", "lung-worker-1"), ("succeeded", "")):
            db.add(vdb.Job(project=project, account=bob, kind="script", target="/ws/train.py", params={}, profile="p",
                           cpu=2, mem_mb=4096, gpus=1 if state == "running" else 0, max_runtime_s=60, state=state,
                           reason="", attempts=0, cancel_requested=False, worker=worker,
                           devices="0" if state == "running" else "", usage={}))
    return settings


def events(settings, prefix):
    return [e for e in open_store(settings).query(limit=100) if e["action"].startswith(prefix)]


def test_open_jobs_are_queued_and_running_ones_with_what_they_asked(world):
    jobs = admin_running.open_jobs(world)
    assert [(j["id"], j["state"], j["user"], j["project"]) for j in jobs] == [(1, "queued", "bob", "lung"),
                                                                              (2, "running", "bob", "lung")]
    assert (jobs[1]["cpu"], jobs[1]["mem_mb"], jobs[1]["gpus"], jobs[1]["devices"]) == (2, 4096, 1, "0")
    assert jobs[1]["use"] == resource_use.UNKNOWN  # its worker's cgroup is not on this host: no made-up figure


def test_admins_cancel_queued_and_running_jobs_audited_from_the_web(world):
    assert admin_running.cancel_job(world, WEB, 1) == "job 1: cancelled"
    assert admin_running.cancel_job(world, WEB, 2) == "job 2: cancel requested"
    with vdb.session_scope(world.vre_db_url) as db:
        assert db.get(vdb.Job, 1).state == "cancelled" and db.get(vdb.Job, 2).cancel_requested
    assert [j["cancel_requested"] for j in admin_running.open_jobs(world)] == [True]
    with pytest.raises(JobRejected, match="already ended"):
        admin_running.cancel_job(world, WEB, 3)
    with pytest.raises(NotFound, match="there is no job 9"):
        admin_running.cancel_job(world, WEB, 9)
    with pytest.raises(AR.Forbidden, match="only admins cancel others' jobs"):
        admin_running.cancel_job(world, AR.Actor("bob"), 2)
    got = [(e["actor"], e["outcome"], e["target"], e["project"], e["client"], e["details"])
           for e in events(world, "job.cancel")]
    assert got == [("admin", "ok", "job/1", "lung", "192.0.2.7", {"via": "web", "while": "queued"}),
                   ("admin", "ok", "job/2", "lung", "192.0.2.7", {"via": "web", "while": "running"}),
                   ("bob", "denied", "job/2", "lung", None,
                    {"via": "web", "reason": "'bob' is not an active admin: only admins cancel others' jobs"})]


def test_a_session_stop_is_for_admins_and_recorded_under_them(world):
    admin_running.check_session_stop(world, WEB, "bob", "lung")
    admin_running.record_session_stop(world, WEB, "bob", "lung")
    with pytest.raises(AR.Forbidden, match="only admins stop others' sessions"):
        admin_running.check_session_stop(world, AR.Actor("bob"), "admin", "lung")
    got = [(e["actor"], e["outcome"], e["target"], e["project"], e["details"]["user"], e["details"]["via"])
           for e in events(world, "session.stop")]
    assert got == [("admin", "ok", "bob-lung", "lung", "bob", "web"),
                   ("bob", "denied", "admin-lung", "lung", "admin", "web")]


def test_sessions_elsewhere_are_unknown_and_gpus_come_from_the_allocator(world):
    docker = Settings(state_dir=world.state_dir, db_url=world.vre_db_url, backend="docker")
    assert resource_use.sessions_use(docker, {"bob": ["lung"]}) == {("bob", "lung"): resource_use.UNKNOWN}
    with vdb.session_scope(world.vre_db_url) as db:
        db.add(vdb.GpuLease(device=1, holder="session:bob-lung", shared=False))
    assert resource_use.session_gpus(world, [("bob", "lung"), ("admin", "lung")]) == {
        ("bob", "lung"): (1,), ("admin", "lung"): ()}


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a cgroup needs root")
def test_cpu_and_memory_come_from_the_cgroup(tmp_path):
    settings = Settings(state_dir=tmp_path / "state", instance=f"vre-test-use-{os.getpid()}")
    try:
        cgroup = SessionCgroup("bob-lung", settings.instance)
        cgroup.create(cpu=0.5, mem_mb=256, pids_max=50)
    except (CgroupError, OSError) as e:
        pytest.skip(f"no writable cgroup hierarchy here: {e}")
    busy = subprocess.Popen([sys.executable, "-c", "b = bytearray(64 << 20)\nwhile True: pass"],
                            preexec_fn=cgroup.join)
    try:
        time.sleep(1.5)  # started, its 64 MiB touched
        (use,) = resource_use.sessions_use(settings, {"bob": ["lung"]}).values()
        assert 0.1 < use.cpu <= 0.75 and use.cpu_limit == 0.5  # the limit holds it near half a CPU
        assert 60 < use.mem_mb < 256 and use.mem_limit_mb == 256
        assert resource_use.sample(settings, {"gone": ["no-such-session"]}) == {"gone": resource_use.UNKNOWN}
    finally:
        busy.kill()
        busy.wait()
        cgroup.kill_all(1)
        cgroup.remove()
        for d in set(cgroup.dirs.values()):
            try:
                d.parent.rmdir()
            except OSError:
                pass


PAGE_NS = dict(base_url="/hub/", prefix="/", static_url=lambda p, include_version=True: "/hub/static/" + p, user=None,
               services=[], parsed_scopes={}, expanded_scopes=set(), no_spawner_check=True, xsrf_token="tok",
               announcement=None, version_hash="", login_url="/hub/login", logout_url="/hub/logout",
               roles=vdb.ROLES, users_url="/services/vre/admin/users", admin_url="/services/vre/admin", me="admin",
               done=None)


def test_the_page_shows_use_unknown_figures_the_new_password_and_the_buttons(world):
    from vre import admin
    from vre.api.pages import environment

    admin.create_account(world, WEB, "olga", oidc=True)  # its role is the identity provider's: no form
    use = resource_use.Use(cpu=0.42, cpu_limit=2.0, mem_mb=812.4, mem_limit_mb=4096.0)
    sessions = [{"user": "bob", "server": "lung", "profile": "gpu", "state": "running", "use": use, "gpus": (0,)},
                {"user": "admin", "server": "lung", "profile": None, "state": "stopping", "use": resource_use.UNKNOWN,
                 "gpus": ()}]
    html = environment().get_template("admin-users.html").render(
        accounts=admin.list_accounts(world), running={"bob": ["lung"], "admin": ["lung"]}, sessions=sessions,
        jobs=admin_running.open_jobs(world), created={"name": "carla", "said": "added researcher 'carla'",
                                                      "password": "s3cret-<once>"}, **PAGE_NS)
    assert 'id="new-password">s3cret-&lt;once&gt;</code>' in html
    assert '0.42 <span class="text-muted">/ 2.00</span> CPU' in html
    assert '812 <span class="text-muted">/ 4096</span> MiB' in html
    assert 'action="/services/vre/admin/sessions/bob/lung/stop"' in html
    assert 'action="/services/vre/admin/sessions/admin/lung/stop"' not in html  # already stopping
    assert html.count(">unknown</span>") == 2 + 2  # the stopping session's CPU and memory, the running job's
    assert 'action="/services/vre/admin/jobs/1/cancel"' in html and 'action="/services/vre/admin/jobs/2/cancel"' in html
    assert 'action="/services/vre/admin/users/bob/role"' in html and 'action="/services/vre/admin/users/new"' in html
    assert "users/olga/role" not in html and "from the identity provider's groups" in html
    html = environment().get_template("admin-users.html").render(
        accounts=[], running=None, sessions=[], jobs=[], error={"name": "Bad", "message": "invalid user name"},
        form={"name": "Bad", "role": "auditor", "login": "oidc"}, **PAGE_NS)
    assert 'id="running-unknown"' in html and 'id="no-jobs"' in html and "invalid user name" in html
    assert 'value="Bad"' in html and '<option value="auditor" selected>' in html


def test_the_routes():
    from vre.api import routes
    from vre.api.admin_pages import AccountCreate, JobCancel, RoleChange, SessionStop

    full = {r[0]: r[1] for r in routes(Settings()) if isinstance(r[1], type)}
    assert full[r"admin/users/new"] is AccountCreate and full[r"admin/users/([^/]+)/role"] is RoleChange
    assert full[r"admin/sessions/([^/]+)/([^/]+)/stop"] is SessionStop
    assert full[r"admin/jobs/([0-9]+)/cancel"] is JobCancel
    assert not any(r[0].startswith("admin") for r in routes(Settings(), sessions_only=True))
