"""The batch queue's rules without running anything: admission and fair order, the GPU allocator
with a fake device list, worker plans, and submission validation (on SQLite and PostgreSQL)."""

import asyncio
import base64
import json
import os

import pytest
from sqlalchemy import select

from vre import db as vdb
from vre import gpus
from vre import projects as P
from vre.accounts import add_account
from vre.jobs import service
from vre.jobs.queue import Ask, Quota, admit, fair_order
from vre.plan import PlanRefused, build_plan, project_uid
from vre.settings import Settings

Q = Quota(slots=3, cpu=4, mem_mb=8192, gpus=1)


def ask(i, owner, cpu=1, mem=1024, gpu=0):
    return Ask(i, owner, cpu, mem, gpu)


# --- admission -------------------------------------------------------------------------------
def test_fair_order_interleaves_members():
    queued = [ask(1, "a"), ask(2, "a"), ask(3, "a"), ask(4, "b"), ask(5, "c")]
    assert [j.id for j in fair_order(queued, [])] == [1, 4, 5, 2, 3]
    # a member who already runs jobs comes after those who run none
    assert [j.id for j in fair_order(queued, [ask(9, "b"), ask(8, "b")])] == [1, 5, 2, 3, 4]


def test_admission_respects_every_quota_and_never_drops():
    queued = [ask(1, "a", cpu=3), ask(2, "b", cpu=2), ask(3, "c", cpu=1)]
    assert [j.id for j in admit(queued, [], Q, free_gpus=1)] == [1, 3]  # 2 does not fit the CPUs left
    assert admit(queued, [ask(7, "x"), ask(8, "y"), ask(9, "z")], Q, 1) == []  # no slot left
    assert [j.id for j in admit([ask(1, "a", mem=9000)], [], Q, 1)] == []  # waits (too big now), stays queued


def test_cpu_jobs_pass_gpu_jobs_waiting_for_a_gpu():
    queued = [ask(1, "a", gpu=1), ask(2, "a", gpu=1), ask(3, "b", gpu=1), ask(4, "a")]
    assert [j.id for j in fair_order(queued, [])] == [1, 3, 2, 4]
    assert [j.id for j in admit(queued, [], Q, free_gpus=1)] == [1, 4]  # one GPU job; the CPU job passes
    # with the GPU busy, the next GPU job waits but CPU work still starts
    assert [j.id for j in admit([ask(2, "a", gpu=1), ask(5, "c")], [ask(1, "a", gpu=1)], Q, 0)] == [5]
    # a host GPU held by a session holds the queue's GPU jobs too
    assert admit([ask(2, "a", gpu=1)], [], Q, free_gpus=0) == []


# --- GPU allocator ---------------------------------------------------------------------------
@pytest.fixture
def gpu_world(db_url, tmp_path):
    return Settings(state_dir=tmp_path, db_url=db_url, gpu_devices="0,1,2")


def test_allocator_never_gives_one_gpu_to_two_exclusive_holders(gpu_world):
    with vdb.session_scope(gpu_world.vre_db_url) as db:
        assert gpus.acquire(db, gpu_world, "session:a", 2) == (0, 1)
        assert gpus.acquire(db, gpu_world, "session:a", 2) == (0, 1)  # idempotent
        assert gpus.acquire(db, gpu_world, "job:1", 1) == (2,)
        with pytest.raises(gpus.NoGpuFree, match="0 free of 3"):
            gpus.acquire(db, gpu_world, "job:2", 1)
        with pytest.raises(gpus.NoGpuFree, match="this host has 3"):
            gpus.acquire(db, gpu_world, "job:3", 4)
        gpus.release(db, "session:a")
        assert gpus.free_count(db, gpu_world) == 2
        assert gpus.acquire(db, gpu_world, "job:2", 1) == (0,)


def test_sharing_holders_share_only_with_each_other(gpu_world):
    with vdb.session_scope(gpu_world.vre_db_url) as db:
        assert gpus.acquire(db, gpu_world, "x", 1) == (0,)
        s1 = gpus.acquire(db, gpu_world, "s1", 1, shared=True)
        s2 = gpus.acquire(db, gpu_world, "s2", 1, shared=True)
        assert s1 == s2 and s1 != (0,)  # packed onto one GPU, never the exclusive one
        assert gpus.acquire(db, gpu_world, "y", 1) not in (s1, (0,))
        assert gpus.leases(db)["s1"] == s1


def test_device_list_settings_and_environment(tmp_path):
    assert gpus.host_devices(Settings(gpu_devices="none")) == ()
    assert gpus.host_devices(Settings(gpu_devices="3, 1")) == (1, 3)
    env = gpus.gpu_env((1, 3))  # only nodes 1 and 3 exist inside: CUDA numbers them 0 and 1
    assert (env["CUDA_VISIBLE_DEVICES"], env["NVIDIA_VISIBLE_DEVICES"], env["VRE_GPU_DEVICES"]) == ("0,1", "1,3", "1,3")
    assert gpus.gpu_env(())["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert gpus.device_nodes(()) == []


# --- worker plans and submissions --------------------------------------------------------------
@pytest.fixture
def world(db_url, tmp_path):
    settings = Settings(state_dir=tmp_path / "state", db_url=db_url, gpu_devices="0")
    with vdb.session_scope(db_url) as db:
        for name in ("ann", "ben", "cat"):
            add_account(db, name, password=f"{name}-password-1")
        db.add(vdb.Dataset(slug="lung-ct", title="lung", path=str(tmp_path / "lung-ct"), catalog={}))
        P.create_project(db, "lung", "Lung")
        P.create_project(db, "other", "Other")
        db.flush()
        P.grant(db, "lung", "lung-ct")
        P.add_member(db, "lung", "ann")
        P.add_member(db, "lung", "ben")
        P.add_member(db, "other", "cat")
        P.set_profile(db, "lung", "gpu", cpu=0.5, memory="1G", gpus=1)
        P.set_profile(db, "lung", "small", cpu=1, memory="2G")
    ws = settings.projects_dir / "lung" / "workspace"
    ws.mkdir(parents=True)
    (ws / "train.py").write_text("print(1)\n")
    (ws / "nb.ipynb").write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return settings


def test_worker_plan_is_the_projects_not_a_members(world):
    with vdb.session_scope(world.vre_db_url) as db:
        p = build_plan(db, world, "ann", "lung", None, role="worker")
        q = build_plan(db, world, "ben", "lung", None, role="worker")
    assert p.profile == "small"  # the default never hands out a GPU
    assert p.uid == q.uid == project_uid(world, 1) and p.session_id == "lung-worker"
    mounts = {m.target: m for m in p.mounts}
    assert mounts["/data/lung-ct"].readonly and not mounts["/home/jovyan/project"].readonly
    assert mounts["/home/jovyan"].source == world.projects_dir / "lung" / "worker-home"


def sub(world, user="ann", **body):
    with vdb.session_scope(world.vre_db_url) as db:
        job = service.submit(db, world, user, {"project": "lung", **body})
        return service.to_dict(world, job)


@pytest.mark.parametrize("body, error, fragment", [
    ({"kind": "script", "target": "project/../../etc/passwd"}, service.JobRejected, "not in the project workspace"),
    ({"kind": "script", "target": "/home/jovyan/secret.py"}, service.JobRejected, "not in the project workspace"),
    ({"kind": "script", "target": "project/nope.py"}, service.JobRejected, "does not exist"),
    ({"kind": "script", "target": "project/train.py", "cpu": 2}, service.JobRejected, "between 0.1 and 1"),
    ({"kind": "script", "target": "project/train.py", "mem_mb": True}, service.JobRejected, "must be a number"),
    ({"kind": "script", "target": "project/train.py", "mem_mb": float("inf")}, service.JobRejected, "must be a number"),
    ({"kind": "script", "target": "project/train.py", "cpu": float("nan")}, service.JobRejected, "between"),
    ({"kind": "script", "target": "project/train.py", "max_runtime": 10**9}, service.JobRejected, "max_runtime"),
    ({"kind": "notebook", "target": "project/nb.ipynb", "params": {"not valid": 1}}, service.JobRejected, "identifiers"),
    ({"kind": "notebook", "target": "project/nb.ipynb", "params": [1]}, service.JobRejected, "JSON object"),
    ({"kind": "function", "payload": "***"}, service.JobRejected, "base64"),
    ({"kind": "cluster", "params": {"workers": 3}}, service.JobRejected, "exceed"),
    ({"kind": "script", "target": "project/train.py", "profile": "big"}, PlanRefused, "no profile 'big'"),
    ({"kind": "script", "target": "project/train.py", "lane": "hidden"}, service.JobRejected, "lane must be one of"),
    ({"kind": "function", "payload": "cA==", "lane": "held"}, service.JobRejected, "cannot be held"),
    ({"kind": "cluster", "lane": "held"}, service.JobRejected, "cannot be held"),
])
def test_bad_submissions_say_what_to_fix(world, body, error, fragment):
    with pytest.raises(error, match=fragment):
        sub(world, **body)


def test_submissions_and_visibility(world):
    j = sub(world, kind="notebook", target="~/project/nb.ipynb", params={"alpha": 0.5}, name="n")
    assert j["target"] == "/home/jovyan/project/nb.ipynb" and j["state"] == "queued" and j["gpus"] == 0
    f = sub(world, kind="function", payload=base64.b64encode(b"pickle").decode(), profile="gpu")
    assert f["gpus"] == 1 and f["cpu"] == 0.5
    c = sub(world, kind="cluster", params={"workers": 2}, cpu=0.5, mem_mb=512)
    assert (c["cpu"], c["mem_mb"]) == (1.0, 1024)
    with vdb.session_scope(world.vre_db_url) as db:
        assert [x.id for x in service.list_jobs(db, world, "ben")] == [c["id"], f["id"], j["id"]]
        assert service.list_jobs(db, world, "cat") == []
        with pytest.raises(service.NotFound):
            service.get(db, world, "cat", j["id"])  # non-members do not learn it exists
        assert service.positions(db, 1) == {j["id"]: 1, f["id"]: 2, c["id"]: 3}
        assert service.cancel(db, world, "ben", j["id"]).state == "cancelled"
        with pytest.raises(service.JobRejected, match="already ended"):
            service.cancel(db, world, "ann", j["id"])
        again = service.rerun(db, world, "ann", f["id"])
        assert again.rerun_of == f["id"] and again.gpus == 1
    out = world.projects_dir / "lung" / "workspace" / "jobs" / str(f["id"])
    assert (out / "function.pkl").read_bytes() == b"pickle"
    assert out.stat().st_uid == project_uid(world, 1) and oct(out.stat().st_mode)[-4:] == "2770"


def test_a_list_is_queued_all_or_none_and_a_refused_lists_folders_go(world, monkeypatch):
    fn = {"project": "lung", "kind": "function", "payload": base64.b64encode(b"pickle").decode()}
    jobs_dir = world.projects_dir / "lung" / "workspace" / "jobs"
    with pytest.raises(service.ListRefused, match="^job 2 of 3: a function job needs") as refused:
        with vdb.session_scope(world.vre_db_url) as db:
            service.submit_many(db, world, "ann", [fn, {**fn, "payload": "***"}, fn])
    assert isinstance(refused.value.error, service.JobRejected) and refused.value.body["payload"] == "***"
    with pytest.raises(service.ListRefused, match="^job 1 of 1: ") as refused:
        with vdb.session_scope(world.vre_db_url) as db:
            service.submit_many(db, world, "cat", [fn])
    assert isinstance(refused.value.error, PlanRefused)   # answered as a non-member's job: 403
    made = []
    make_outdir = service.make_outdir

    def second_fails(settings, project, job_id, *args, **kw):
        made.append(job_id)
        if len(made) == 2:
            raise service.JobRejected("cannot make the job's folder")
        return make_outdir(settings, project, job_id, *args, **kw)
    monkeypatch.setattr(service, "make_outdir", second_fails)
    with pytest.raises(service.ListRefused, match="^job 2 of 3: cannot make"):
        with vdb.session_scope(world.vre_db_url) as db:
            service.submit_many(db, world, "ann", [fn, fn, fn])
    # the first one's folder is set aside: not a job's folder any more
    assert not (jobs_dir / str(made[0])).exists()
    assert [p.read_bytes() for p in jobs_dir.glob(f".stale-{made[0]}-*/function.pkl")] == [b"pickle"]
    monkeypatch.undo()
    with vdb.session_scope(world.vre_db_url) as db:
        assert service.list_jobs(db, world, "ann") == []
        jobs = service.submit_many(db, world, "ann", [fn, {**fn, "name": "second"}, fn])
        ids = [j.id for j in jobs]
        assert ids == sorted(ids) and jobs[1].name == "second"
    assert all((jobs_dir / str(i) / "function.pkl").read_bytes() == b"pickle" for i in ids)


def test_a_held_sweep_reads_its_script_once_and_a_list_reads_a_bounded_amount(world, monkeypatch):
    ws = world.projects_dir / "lung" / "workspace"
    read = []
    real = service.read_workspace_file
    monkeypatch.setattr(service, "read_workspace_file", lambda folder, path: (read.append(path), real(folder, path))[1])
    sweep = [{"project": "lung", "kind": "script", "target": "project/train.py", "lane": "held",
              "params": {"args": [str(i)]}} for i in range(50)]
    with vdb.session_scope(world.vre_db_url) as db:
        jobs = service.submit_many(db, world, "ann", sweep)
        assert [j.params["args"] for j in jobs] == [[str(i)] for i in range(50)]
    assert read == ["project/train.py"]
    # the same file however spelt is read once; what a list reads and carries is bounded in total
    read.clear()
    spelt = [{**sweep[0], "target": t} for t in ("~/project/train.py", "/home/jovyan/project//train.py")]
    with vdb.session_scope(world.vre_db_url) as db:
        service.submit_many(db, world, "ann", [sweep[0], *spelt])
    assert read == ["project/train.py"]
    monkeypatch.setattr(service, "MAX_LIST_BYTES", 25)   # train.py and more.py: 9 bytes, most.py: 10
    (ws / "more.py").write_text("print(2)\n")
    (ws / "most.py").write_text("print(33)\n")
    refused = [sweep[0], {**sweep[0], "target": "project/more.py"}, {**sweep[0], "target": "project/most.py"}]
    with pytest.raises(service.ListRefused, match="^job 3 of 3: the list's scripts and notebooks weigh more"):
        with vdb.session_scope(world.vre_db_url) as db:
            service.submit_many(db, world, "ann", refused)   # reads 9 + 9 + 10: over 25 at the 3rd
    with pytest.raises(service.ListRefused, match="^job 3 of 5: the list's payloads and held jobs' copies"):
        with vdb.session_scope(world.vre_db_url) as db:
            service.submit_many(db, world, "ann", sweep[:5])   # reads 9 once, carries 9 each: over 25 at the 3rd


def test_what_a_submission_carries_must_be_storable_text_and_bounded(world):
    for body, words in (({"kind": "function", "payload": "cA==", "name": "a\ud800"}, "name must be text"),
                        ({"kind": "function", "payload": "cA==", "target": "\udfff"}, "target must be text"),
                        ({"kind": "notebook", "target": "project/nb.ipynb", "params": {"x": [[[[[]]]]] * 1}},
                         None),
                        ({"kind": "notebook", "target": "project/nb.ipynb",
                          "params": {"x": json.loads("[" * 40 + "]" * 40)}}, "nested at most 32 deep"),
                        ({"kind": "notebook", "target": "project/nb.ipynb", "params": {"x": "y" * 70_000}},
                         "at most 64 KiB")):
        if words is None:
            assert sub(world, **body)["params"] == body["params"]
        else:
            with pytest.raises(service.JobRejected, match=words):
                sub(world, **body)


def test_a_held_job_keeps_its_folder_log_and_outputs_from_members(world):
    h = sub(world, kind="script", target="project/train.py", lane="held")
    assert h["lane"] == "held" and h["outdir"] == f"/held/jobs/{h['id']}"
    folder = world.projects_dir / "lung" / "held" / "jobs" / str(h["id"])
    assert folder.is_dir() and not (world.projects_dir / "lung" / "workspace" / "jobs" / str(h["id"])).exists()
    assert folder.stat().st_uid == project_uid(world, 1) and oct(folder.stat().st_mode)[-3:] == "700"
    (folder / "log.txt").write_text("patient 123 has ...\n")
    (folder / "progress.json").write_text('{"done": 1, "total": 2}')
    (folder / "counts.csv").write_text("a,1\n")
    with vdb.session_scope(world.vre_db_url) as db:
        job = service.get(db, world, "ben", h["id"])
        assert service.read_log(world, job)[0] == "patient 123 has ...\n"  # admins' view (vre jobs log)
        text, _ = service.member_log(world, job)
        assert "patient" not in text and "airlock" in text and f"/held/jobs/{h['id']}" in text
        detail = service.to_dict(world, job, detail=True)
        assert detail["outputs"] == [] and detail["progress"] is None and "airlock" in detail["held"]
        # it runs a copy of its script taken at submission (a held worker has no workspace)
        assert service.run_target(job) == f"/held/jobs/{h['id']}/input/train.py"
        again = service.rerun(db, world, "ann", h["id"])
        assert again.lane == "held" and again.target == "/home/jovyan/project/train.py"
    copy = folder / "input" / "train.py"
    assert copy.read_bytes() == (world.projects_dir / "lung" / "workspace" / "train.py").read_bytes()
    assert copy.stat().st_uid == project_uid(world, 1) and oct(copy.stat().st_mode)[-3:] == "400"
    o = sub(world, kind="script", target="project/train.py")
    assert o["lane"] == "open" and o["outdir"] == f"/home/jovyan/project/jobs/{o['id']}"
    with vdb.session_scope(world.vre_db_url) as db:
        assert service.run_target(service.get(db, world, "ann", o["id"])) == "/home/jovyan/project/train.py"


def test_root_follows_no_link_a_member_or_held_job_plants(world, tmp_path):
    """The service is root and job folders lie where members (or held jobs) write: a link in
    place of a folder or file, or a FIFO, is refused or ignored, never followed."""
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o755)
    secret = tmp_path / "secret.txt"
    secret.write_text('{"hub": "secret"}')
    os.chmod(secret, 0o600)
    workspace = world.projects_dir / "lung" / "workspace"
    # a link to a file outside the workspace cannot be a job
    (workspace / "evil.py").symlink_to(secret)
    with pytest.raises(service.JobRejected, match="not a plain file"):
        sub(world, kind="script", target="project/evil.py")
    # jobs/ swapped for a link: refused, and the link's target keeps its owner and mode
    o = sub(world, kind="script", target="project/train.py")
    (workspace / "jobs").rename(workspace / "jobs.real")
    (workspace / "jobs").symlink_to(victim)
    with pytest.raises(service.JobRejected, match="real folders"):
        sub(world, kind="script", target="project/train.py")
    assert victim.stat().st_uid == 0 and oct(victim.stat().st_mode)[-3:] == "755"
    (workspace / "jobs").unlink()
    (workspace / "jobs.real").rename(workspace / "jobs")
    # an open job's log, progress and outputs planted as links (and a FIFO) are not read through
    out = workspace / "jobs" / str(o["id"])
    (out / "log.txt").symlink_to(secret)
    (out / "progress.json").symlink_to(secret)
    (out / "elsewhere").symlink_to(tmp_path)
    (out / "result.csv").write_text("a,1\n")
    os.mkfifo(out / "pipe")
    with vdb.session_scope(world.vre_db_url) as db:
        job = service.get(db, world, "ann", o["id"])
        assert service.read_log(world, job) == ("", 0)
        assert service.progress(world, job) is None
        assert [f["path"].rsplit("/", 1)[1] for f in service.outputs(world, job)] == ["result.csv"]
        (out / "log.txt").unlink()
        os.mkfifo(out / "log.txt")  # would block an open() for reading: not opened as a file
        assert service.read_log(world, job) == ("", 0)
    # a function job's payload swapped for a link: its rerun does not carry the link's target
    f = sub(world, kind="function", payload=base64.b64encode(b"pickle").decode())
    pkl = workspace / "jobs" / str(f["id"]) / "function.pkl"
    pkl.unlink()
    pkl.symlink_to(secret)
    with vdb.session_scope(world.vre_db_url) as db, pytest.raises(service.JobRejected, match="no longer"):
        service.rerun(db, world, "ann", f["id"])
    # a held job plants the next job's folder (a module that would shadow an import in its working
    # directory): the next job gets a fresh folder, what was planted is moved aside
    last = sub(world, kind="script", target="project/train.py", lane="held")
    held = world.projects_dir / "lung" / "held"
    planted = held / "jobs" / str(last["id"] + 1)
    planted.mkdir()
    (planted / "json.py").write_text("raise SystemExit('planted')\n")
    nxt = sub(world, kind="script", target="project/train.py", lane="held")
    assert nxt["id"] == last["id"] + 1 and sorted(p.name for p in planted.iterdir()) == ["input"]
    assert [p.name for p in (held / "jobs").glob(f".stale-{nxt['id']}-*")]
    # a held job swaps the held jobs/ folder for a link: the next held submission is refused
    (held / "jobs").rename(held / "jobs.real")
    (held / "jobs").symlink_to(victim)
    with pytest.raises(service.JobRejected, match="real folders"):
        sub(world, kind="script", target="project/train.py", lane="held")
    assert victim.stat().st_uid == 0 and oct(victim.stat().st_mode)[-3:] == "755" and not any(victim.iterdir())


def test_what_a_pool_reports_about_a_job_is_reduced_to_figures():
    from vre.jobs.engine import _usage

    assert _usage({"wall_s": 1.23456, "cpu_s": 2, "max_rss_mb": 30.5}) == {"wall_s": 1.235, "cpu_s": 2.0,
                                                                          "max_rss_mb": 30.5}
    assert _usage({"wall_s": "patient 123", "note": 5, "cpu_s": True, "max_rss_mb": 1e300}) == {}
    assert _usage("a forged report") == {} and _usage(None) == {}


def test_on_kubernetes_only_jobs_its_executor_runs_are_queued(world):
    """On Kubernetes, jobs run as pods (vre.jobs.pods) when their data's reads are recorded by the
    per-node observer or may go unobserved; anything else is refused with the reason instead of
    waiting in the queue for ever."""
    k8s = world.replace(backend="kubernetes", k8s_storage="hostPath", k8s_unobserved_reads=True)
    with pytest.raises(service.JobRejected, match="runs no observer of dataset reads"):
        sub(k8s.replace(k8s_unobserved_reads=False), kind="script", target="project/train.py")
    assert sub(k8s, kind="script", target="project/train.py")["state"] == "queued"
    observed = k8s.replace(k8s_unobserved_reads=False, k8s_read_observer=True)
    assert sub(observed, kind="script", target="project/train.py")["state"] == "queued"
    # GPUs are a count the cluster places: the hub's own machine needs none
    assert sub(k8s.replace(gpu_devices="none"), kind="script", target="project/train.py", profile="gpu",
               gpus=1)["gpus"] == 1
    with pytest.raises(service.JobRejected, match="this host has 0"):   # control: elsewhere they are devices
        sub(world.replace(gpu_devices="none"), kind="script", target="project/train.py", profile="gpu", gpus=1)


def test_as_kubernetes_jobs_on_claims_inputs_must_fit_a_secret(world, monkeypatch):
    """Under ``k8s_job_runner = "jobs"`` with claims a job's inputs travel in its Job's Secret: a
    function payload over the limit is refused at submission, saying why and what to do; the same
    payload is fine for the Dask runner (its agent takes the spec), and cluster jobs are Dask's."""
    from vre.claims.files import LOCAL
    from vre.jobs.pools import KUBE_JOB_INPUTS_MAX, as_kubernetes_job

    workspace = world.projects_dir / "lung" / "workspace"
    monkeypatch.setattr(service, "workspace_folder", lambda *a: service.Folder(LOCAL, str(workspace), ""))
    jobs = world.replace(backend="kubernetes", k8s_storage="pvc", k8s_unobserved_reads=True, k8s_job_runner="jobs")
    big = base64.b64encode(b"x" * (KUBE_JOB_INPUTS_MAX + 1)).decode()
    with pytest.raises(service.JobRejected, match=r"weigh 600 KiB; this deployment runs each job as a Kubernetes Job"):
        sub(jobs, kind="function", payload=big)
    small = base64.b64encode(b"x" * (KUBE_JOB_INPUTS_MAX - 100)).decode()
    assert sub(jobs, kind="function", payload=small)["state"] == "queued"
    assert sub(jobs.replace(k8s_job_runner="dask"), kind="function", payload=big)["state"] == "queued"
    assert [as_kubernetes_job(jobs, k) for k in ("notebook", "script", "function", "cluster")] == [True] * 3 + [False]
    assert not as_kubernetes_job(world.replace(k8s_job_runner="jobs"), "script")   # only on Kubernetes


def test_on_claims_the_worker_makes_the_folder_from_what_the_service_kept(world, tmp_path, monkeypatch):
    """With claims the hub cannot write a job's folder: the service keeps the job's inputs in its
    own state (root-only), the engine sends them in the job's spec, and the worker's task makes
    the folder fresh with the lane's mode and writes them; the engine drops what ended jobs kept."""
    from types import SimpleNamespace

    from vre.claims.files import LOCAL
    from vre.jobs import inputs
    from vre.jobs.engine import Engine
    from vre_session.jobs.task import FolderInTheWay, make_outdir

    pvc = world.replace(backend="kubernetes", k8s_storage="pvc", k8s_unobserved_reads=True)
    workspace = world.projects_dir / "lung" / "workspace"
    asked = []

    def folder(db, settings, user, project):   # what her claims reader answers (a unit test has no cluster)
        asked.append(user)
        return service.Folder(LOCAL, str(workspace), "")
    monkeypatch.setattr(service, "workspace_folder", folder)

    f = sub(pvc, kind="function", payload=base64.b64encode(b"pickle").decode())
    h = sub(pvc, kind="script", target="project/train.py", lane="held", user="ben")
    assert asked == ["ben"]   # the script was read as its author reads the workspace
    assert not (workspace / "jobs").exists() and not (world.projects_dir / "lung" / "held").exists()
    kept = inputs.stash_dir(pvc, f["id"])
    assert oct(kept.stat().st_mode)[-3:] == "700" and oct(kept.parent.stat().st_mode)[-3:] == "700"
    engine = SimpleNamespace(settings=pvc)
    with vdb.session_scope(pvc.vre_db_url) as db:
        fjob, hjob = vdb.get_by_id(db, vdb.Job, f["id"]), vdb.get_by_id(db, vdb.Job, h["id"])
        plan = build_plan(db, pvc, "ann", "lung", None, role="worker")
        fspec, hspec = Engine.spec(engine, plan, fjob, "w1"), Engine.spec(engine, plan, hjob, "w2")
        assert Engine.spec(SimpleNamespace(settings=world), plan, fjob, "w1").keys() == {
            "id", "kind", "target", "params", "project", "user", "worker", "outdir", "max_runtime_s", "env"}
        # a function's rerun before it started takes what was kept
        assert service.rerun(db, pvc, "ann", f["id"]).kind == "function"
    assert fspec["outdir_mode"] == 0o2770 and hspec["outdir_mode"] == 0o700
    assert base64.b64decode(fspec["inputs"]["function.pkl"]) == b"pickle"
    assert base64.b64decode(hspec["inputs"]["input/train.py"]) == b"print(1)\n"

    # the worker's side, in folders of this test standing for the claims
    root = tmp_path / "claims"
    (root / "held").mkdir(parents=True)
    fspec["outdir"], hspec["outdir"] = str(root / "ws" / "jobs" / "7"), str(root / "held" / "jobs" / "8")
    (root / "ws").mkdir()
    make_outdir(fspec)
    out = root / "ws" / "jobs" / "7"
    assert oct(out.stat().st_mode)[-4:] == "2770" and (out / "function.pkl").read_bytes() == b"pickle"
    assert oct((root / "ws" / "jobs").stat().st_mode)[-4:] == "2770"
    (out / "log.txt").write_text("first start\n")
    make_outdir({**fspec, "attempt": 2})   # its second start (the first worker was lost) goes on there
    assert sorted(p.name for p in out.iterdir()) == ["function.pkl", "log.txt"]
    make_outdir({**fspec, "attempt": 1})   # a first start finds something in its place: moved aside
    assert sorted(p.name for p in out.iterdir()) == ["function.pkl"]
    (stale,) = (root / "ws" / "jobs").glob(".stale-7-*")
    assert (stale / "log.txt").read_text() == "first start\n"
    planted = root / "held" / "jobs" / "8"   # an earlier held job plants a module where the next starts
    planted.mkdir(parents=True)
    (planted / "json.py").write_text("raise SystemExit('planted')\n")
    make_outdir(hspec)
    assert sorted(p.name for p in planted.iterdir()) == ["input"]
    copy = planted / "input" / "train.py"
    assert copy.read_bytes() == b"print(1)\n" and oct(copy.stat().st_mode)[-3:] == "400"
    assert oct(planted.stat().st_mode)[-3:] == "700" and oct((planted / "input").stat().st_mode)[-3:] == "500"
    (root / "elsewhere").mkdir()
    (root / "ws" / "jobs").rename(root / "ws" / "jobs.real")
    (root / "ws" / "jobs").symlink_to(root / "elsewhere")
    with pytest.raises(FolderInTheWay, match="must be a real folder"):
        make_outdir(fspec)
    assert not any((root / "elsewhere").iterdir())

    # inputs are kept while a job may start, and a week for one that never started (its rerun)
    with vdb.session_scope(pvc.vre_db_url) as db:
        service.cancel(db, pvc, "ann", f["id"])
        vdb.get_by_id(db, vdb.Job, h["id"]).state = "succeeded"   # it ran: its folder has them
        vdb.get_by_id(db, vdb.Job, h["id"]).attempts = 1
    inputs.stash(pvc, 9999, {"function.pkl": b"not committed yet"})   # a submission under way
    inputs.stash(pvc, 9998, {"function.pkl": b"a failed submission"})
    os.utime(inputs.stash_dir(pvc, 9998), (1, 1))
    Engine.drop_inputs(engine)
    assert inputs.stashed(pvc) == {f["id"], 9999, fspec["id"] + 2}   # the rerun above is queued
    with vdb.session_scope(pvc.vre_db_url) as db:
        assert service.rerun(db, pvc, "ann", f["id"]).kind == "function"


def test_the_api_reads_a_jobs_folder_once_its_transaction_has_ended(world):
    """On claims a folder read may wait for a member's claims reader to start: the jobs API does
    it after its database transaction (``_JobsHandler.run(..., then=)``), holding no connection
    meanwhile; an error there is still mapped to an answer."""
    from types import SimpleNamespace

    from tornado import web

    from vre.jobs.api import _JobsHandler

    handler = SimpleNamespace(current_user=SimpleNamespace(name="ann"), vre=world)
    engine = vdb.engine_for(world.vre_db_url)
    seen = {}

    def find(db, user):
        slug = db.scalar(select(vdb.Project.slug).limit(1))
        seen["during"] = engine.pool.checkedout()   # the transaction holds its connection
        return slug

    def read(slug):
        seen["after"] = engine.pool.checkedout()
        return slug
    assert asyncio.run(_JobsHandler.run(handler, find, then=read)) == "lung"
    assert seen == {"during": 1, "after": 0}

    def unavailable(_):
        raise service.JobRejected("the folder cannot be read now")
    with pytest.raises(web.HTTPError) as e:
        asyncio.run(_JobsHandler.run(handler, find, then=unavailable))
    assert e.value.status_code == 400


def test_a_submission_on_claims_starts_her_reader_before_its_transaction(world):
    """``warm`` asks the reader behind the workspace a first question (starting its pod) outside
    any transaction; what fails there is left to the submission, which says it with its answer."""
    from types import SimpleNamespace

    from vre.claims.files import ReaderUnavailable
    from vre.jobs.api import warm

    asked = []

    def lstat(path):
        asked.append(path)
        raise ReaderUnavailable("her reader did not answer")
    warm(service.Folder(SimpleNamespace(lstat=lstat), "/claims/workspace", ""))
    warm(None)   # not a member: nothing to start
    assert asked == ["/claims/workspace"]


def test_a_submission_commits_its_jobs_with_their_audit_records_or_neither(world, monkeypatch):
    """The API's ``queue``: jobs and their ``job.submit`` records in one transaction; if the
    records cannot be written, no job is queued and what was written for them is set aside."""
    from types import SimpleNamespace

    from vre.audit import open_store
    from vre.jobs import api

    handler = SimpleNamespace(vre=world)
    fn = {"project": "lung", "kind": "function", "payload": base64.b64encode(b"pickle").decode()}
    jobs_dir = world.projects_dir / "lung" / "workspace" / "jobs"
    store = open_store(world)
    real = store.append_within

    def broken(dbapi, events, commit):
        raise OSError("the audit store is full")
    monkeypatch.setattr(store, "append_within", broken)
    with pytest.raises(OSError, match="full"):
        with vdb.session_scope(world.vre_db_url, durable=True) as db:
            jobs = service.submit_many(db, world, "ann", [fn, fn])
            ids = [j.id for j in jobs]
            api.JobListHandler.queue(handler, db, "ann", jobs, list=2)
    assert not any((jobs_dir / str(i)).exists() for i in ids) and len(list(jobs_dir.glob(".stale-*"))) == 2
    with vdb.session_scope(world.vre_db_url) as db:
        assert service.list_jobs(db, world, "ann") == []
    monkeypatch.setattr(store, "append_within", real)
    with vdb.session_scope(world.vre_db_url, durable=True) as db:
        out = api.JobListHandler.queue(handler, db, "ann", service.submit_many(db, world, "ann", [fn, fn]), list=2)
    records = {e["target"]: e for e in store.query(limit=10, action="job.submit")}
    assert [records[f"job/{j['id']}"]["details"]["list"] for j in out] == [2, 2]
    assert records[f"job/{out[0]['id']}"]["actor"] == "ann" and records[f"job/{out[0]['id']}"]["project"] == "lung"


def test_a_refused_submission_is_recorded_under_the_project_it_names_only_if_that_could_be_one():
    """What a refused body calls its project is the researcher's own text: it becomes the audit
    record's project only if it could be one (printable, storable, at most 255 characters);
    otherwise it is kept, cut short, in the details alone."""
    from vre.jobs.api import project_named, refused
    assert project_named({"project": "lung-screening"}) == "lung-screening"
    for bad in ("lung\u202escreening", "lung\u2028x", "lung\u200bx", "lung\x85", "p" * 256, "lung\ud800", "", 5, None):
        assert project_named({"project": bad}) is None, repr(bad)
        json.dumps(refused({"project": bad}, "no"), ensure_ascii=False).encode()   # storable as details
    assert project_named(["lung"]) is None
