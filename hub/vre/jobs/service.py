"""The queue in the VRE database: submit, list, cancel, re-run, logs and outputs.

A job runs in one of two lanes (``db.JOB_LANES``): ``open`` jobs run on the project's shared
workers and write their folder in the workspace; ``held`` jobs also get the project's batch-only
datasets, and their folder (log, outputs, progress) is kept outside the workspace: members see
that a held job ran and how it ended, never what it wrote; its files leave only through the
airlock (``/held/jobs/<id>`` in an export request). A held job does not see the live workspace
(whose FIFOs, sockets and file-watch events would carry data back to the sessions): its script or
notebook is copied into ``/held/jobs/<id>/input/`` at submission and runs from there.

The service runs as root and its job folders lie where members (open lane) or held jobs (held
lane) can write: every file and folder there is opened through :mod:`vre.beneath` (no link
followed, no FIFO opened). Where the folders are on claims the hub cannot mount (Kubernetes,
``k8s_storage = "pvc"``), the worker makes the job's folder and writes its inputs, kept by the
service until then (:mod:`.inputs`), and the service reads workspace files, logs, progress and
outputs through a claims reader of the acting member (:mod:`vre.claims`): what she could read
herself, as her uid (``Folder``).

Every function takes a database session and the acting user; membership is checked through the
same plan the sessions use (``build_plan(role="worker")``), so a job can never ask for more than
a session of the project could. Errors are ``JobRejected`` (bad input: the message says what to
fix), ``PlanRefused`` (not allowed) or ``NotFound``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import beneath
from ..accounts import get_account
from ..audit.schema import encodes
from ..claims.files import LOCAL, Files
from ..db import JOB_FINAL, JOB_LANES, Job, Project, get_by_id, utcnow
from ..errors import NotFound, VREError
from ..gpus import host_devices
from ..plan import (HELD_ROOT, HOME, WORKSPACE, PlanRefused, build_plan, held_dir, jobs_run_dir, pool_for,
                    project_paths)
from ..settings import Settings, files_on_host, k8s_reads_allowed
from . import inputs
from .pools import KUBE_JOB_INPUTS_MAX, MAX_CLUSTER_WORKERS, as_kubernetes_job
from .queue import Ask, fair_order

log = logging.getLogger("vre.jobs")

KINDS = ("notebook", "script", "function", "cluster")
#: What a held job can be: its result is files, which stay held (a function's return value or a
#: cluster's workers would hand data back to the session).
HELD_KINDS = ("notebook", "script")
#: What members are told instead of a held job's log, progress and files.
HELD_NOTE = ("held: its log and outputs stay on the hub; request their export through the airlock "
             "(add {outdir} to an export request)")
MAX_PAYLOAD = 16 * 1024 * 1024
MAX_TARGET = 64 * 1024 * 1024   # a notebook or script read at submission (a held job's is copied)
MAX_LIST_BYTES = 2 * MAX_TARGET  # what one list of submissions reads (scripts, notebooks) and writes
MAX_PARAMS = 64 * 1024          # a notebook's parameters, as JSON
MAX_PARAMS_DEPTH = 32           # ... nested at most this deep
INPUT_DIR = "input"             # a held job's copy of its script or notebook, in its folder


class JobRejected(VREError):
    """A submission the queue cannot take; the message says what to change."""


def outdir_inside(job_id: int, lane: str = "open") -> str:
    """A job's folder as the job itself sees it (and sessions, for open jobs; the airlock's name
    for held ones)."""
    return f"{HELD_ROOT}/jobs/{job_id}" if lane == "held" else f"{WORKSPACE}/jobs/{job_id}"


def job_folder(settings: Settings, project: str, job_id: int, lane: str = "open") -> tuple[Path, str]:
    """(trusted base, path below it) of a job's folder: ``<workspace>`` + ``jobs/<id>``, or held
    ``<project dir>`` + ``held/jobs/<id>``. The base is the hub's (researchers and jobs cannot
    replace it); everything below is opened through ``vre.beneath``."""
    if lane == "held":
        held = held_dir(settings, project)
        return held.parent, f"{held.name}/jobs/{job_id}"
    workspace, _ = project_paths(settings, project, "_")
    return workspace, f"jobs/{job_id}"


def outdir_on_host(settings: Settings, project: str, job_id: int, lane: str = "open") -> Path:
    base, rel = job_folder(settings, project, job_id, lane)
    return base / rel


def job_dir(settings: Settings, job: Job) -> Path:
    """``job``'s folder on the host."""
    return outdir_on_host(settings, job.project.slug, job.id, job.lane)


class Folder(NamedTuple):
    """A folder of the project's and who answers for it: ``files`` reads ``rel`` below the
    trusted ``base`` (the host's files, or a claims reader's)."""
    files: Files
    base: str
    rel: str


def workspace_folder(db: Session, settings: Settings, user: str, project: str) -> Folder:
    """The project's workspace as ``user`` (a member) reads it: on the host, or through her
    claims reader (started at the first question)."""
    if files_on_host(settings):
        workspace, _ = project_paths(settings, project, "_")
        return Folder(LOCAL, str(workspace), "")
    from ..claims.pods import ClaimFiles, reader_path   # the cluster's client, only where it is used

    return Folder(ClaimFiles(settings, build_plan(db, settings, user, project, None)), reader_path("workspace"), "")


def job_files(db: Session, settings: Settings, job: Job, user: str) -> Folder:
    """``job``'s folder as ``user`` reads it: an open job's through her view of the workspace, a
    held job's (the airlock's and admins' business: members are told nothing of its files)
    through the held pool's reader on claims."""
    if files_on_host(settings):
        base, rel = job_folder(settings, job.project.slug, job.id, job.lane)
        return Folder(LOCAL, str(base), rel)
    if job.lane == "held":
        from ..claims.pods import ClaimFiles, reader_path

        plan = build_plan(db, settings, user, job.project.slug, None, role="held")
        return Folder(ClaimFiles(settings, plan), reader_path("held"), f"jobs/{job.id}")
    return workspace_folder(db, settings, user, job.project.slug)._replace(rel=f"jobs/{job.id}")


def _host_folder(settings: Settings, job: Job) -> Folder:
    if not files_on_host(settings):
        raise VREError("job folders are on the project's claims here: name the member who reads them")
    base, rel = job_folder(settings, job.project.slug, job.id, job.lane)
    return Folder(LOCAL, str(base), rel)


def workspace_relpath(path: str) -> str:
    """The workspace-relative path of ``path`` as a session names it (absolute, ``~/project/...``,
    or relative to the home as the Lab's file browser shows it: ``project/...``). Only workspace
    files can be jobs: workers see no private homes."""
    raw = path.strip()
    if raw.startswith("~/"):
        raw = raw[2:]
    if not raw.startswith("/"):
        raw = f"{HOME}/{raw}"
    inner = os.path.normpath(raw)
    if not (inner + "/").startswith(WORKSPACE + "/") or inner == WORKSPACE:
        raise JobRejected(f"{path!r} is not in the project workspace ({WORKSPACE}): jobs only see the "
                          "workspace and the datasets, so move or copy the file into ~/project first")
    return os.path.relpath(inner, WORKSPACE)


def read_workspace_file(workspace: Folder, path: str) -> tuple[str, bytes]:
    """(the path inside sessions, the content) of the regular workspace file ``path`` names, read
    without following links (members can put anything in the workspace, and this runs as root)."""
    rel = workspace_relpath(path)
    try:
        data = workspace.files.read(workspace.base, rel, 0, MAX_TARGET + 1)
    except FileNotFoundError:
        raise JobRejected(f"{path!r} does not exist in the project workspace") from None
    except OSError:
        raise JobRejected(f"{path!r} is not a plain file in the project workspace (a folder, a link or a "
                          "special file cannot be a job)") from None
    if len(data) > MAX_TARGET:
        raise JobRejected(f"{path!r} is larger than {MAX_TARGET >> 20} MiB; a job's script or notebook must be smaller")
    return f"{WORKSPACE}/{rel}", data


def _number(body: dict, name: str, kind, default, lo, hi, unit: str = ""):
    value = body.get(name)
    if value in (None, ""):
        return default
    if isinstance(value, bool):
        raise JobRejected(f"{name} must be a number")
    try:
        value = kind(value)
    except (TypeError, ValueError, OverflowError):   # OverflowError: int(Infinity)
        raise JobRejected(f"{name} must be a number, not {str(value)[:40]!r}") from None
    if not lo <= value <= hi:
        raise JobRejected(f"{name} must be between {lo:g} and {hi:g}{unit}, not {value:g}")
    return value


def submit(db: Session, settings: Settings, user: str, body: dict) -> Job:
    """Validate a submission and queue it. ``body`` is the API's JSON (see extensions/API.md)."""
    job, keep, _ = _checked(db, settings, user, body)
    db.add(job)
    db.flush()
    keep()
    return job


class ListRefused(VREError):
    """How a list of submissions failed: ``error``, one of its jobs' refusal (its message then
    says which: ``job 3 of 40: ...``), and ``body``, that job's submission."""

    def __init__(self, error: VREError, number: int, count: int, body):
        super().__init__(f"job {number} of {count}: {error}")
        self.error, self.body = error, body


def submit_many(db: Session, settings: Settings, user: str, bodies: list) -> list[Job]:
    """Validate a list of submissions and queue them, all or none (a parameter sweep is one
    request and one transaction, not N). Every job is checked before any is added, so no write
    lock is held while files are read; a script or notebook named by several is read once, and
    what a list reads of them and writes is bounded (MAX_LIST_BYTES). The first refusal raises ListRefused,
    and the folders made for the jobs before it are set aside (``set_aside``); the caller's
    transaction then rolls back."""
    reads: dict = {}
    checked, carried = [], 0
    for number, body in enumerate(bodies, 1):
        try:
            job, keep, size = _checked(db, settings, user, body, reads=reads)
            carried += size
            if carried > MAX_LIST_BYTES:   # payloads and held copies, written under the write lock
                raise JobRejected(f"the list's payloads and held jobs' copies of their code weigh more than "
                                  f"{MAX_LIST_BYTES // 2**20} MiB together; submit it in shorter lists")
        except VREError as e:
            raise ListRefused(e, number, len(bodies), body) from None
        checked.append((job, keep))
    jobs = [job for job, _ in checked]
    db.add_all(jobs)
    db.flush()
    kept: list[Job] = []
    try:
        for number, (job, keep) in enumerate(checked, 1):
            try:
                keep()
            except VREError as e:
                raise ListRefused(e, number, len(bodies), bodies[number - 1]) from None
            kept.append(job)
    except BaseException:
        for job in kept:
            set_aside(settings, job.project.slug, job.id, job.lane)
        raise
    return jobs


def set_aside(settings: Settings, project: str, job_id: int, lane: str) -> None:
    """Undo what a submission of a job kept when it is not committed after all: its folder is
    renamed aside (``beneath.rename_aside``), its stashed inputs are removed."""
    if not files_on_host(settings):
        inputs.discard(settings, job_id)
        return
    base, rel = job_folder(settings, project, job_id, lane)
    parent, name = os.path.split(rel)
    try:
        fd = beneath.open_dir_beneath(base, parent)
        try:
            beneath.rename_aside(fd, name)
        finally:
            os.close(fd)
    except OSError as e:
        log.warning("the folder of job %s, not submitted after all, could not be set aside: %s", job_id, e)


def _checked(db: Session, settings: Settings, user: str, body: dict, *, reads: dict | None = None):
    """(the job, not added to ``db``; a callable, for once it has its id, that writes what it
    carries: its folder and the function's payload or the held job's code) or a refusal
    (JobRejected, PlanRefused). ``reads``: the workspace files a list read so far, by path."""
    if not isinstance(body, dict):
        raise JobRejected("a job must be a JSON object (the request's body: one, or a list of them)")
    kind = body.get("kind")
    if kind not in KINDS:
        raise JobRejected(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    project_slug = body.get("project") or ""
    if not isinstance(project_slug, str) or not project_slug:
        raise JobRejected("name the project the job belongs to (\"project\")")
    profile_name = body.get("profile")
    if profile_name is not None and not isinstance(profile_name, str):
        raise JobRejected("profile must be the name of one of the project's profiles")
    lane = body.get("lane") or "open"
    if lane not in JOB_LANES:
        raise JobRejected(f"lane must be one of {', '.join(JOB_LANES)}, not {lane!r} (held: batch-only "
                          "datasets too, outputs leave only through the airlock)")
    if lane == "held" and kind not in HELD_KINDS:
        raise JobRejected(f"a {kind} job cannot be held: its result would come back to the session; submit a "
                          f"{' or '.join(HELD_KINDS)} that writes its outputs to $VRE_JOB_OUTPUT")
    plan = build_plan(db, settings, user, project_slug, profile_name,
                      role="held" if lane == "held" else "worker")  # PlanRefused
    project = db.scalar(select(Project).where(Project.slug == project_slug))

    cpu = _number(body, "cpu", float, plan.cpu, 0.1, plan.cpu, f" (profile {plan.profile!r} allows {plan.cpu:g})")
    mem = _number(body, "mem_mb", int, plan.mem_mb, 64, plan.mem_mb, f" MiB (profile {plan.profile!r})")
    gpus = _number(body, "gpus", int, plan.gpus, 0, plan.gpus, f" (profile {plan.profile!r} has {plan.gpus})")
    if gpus > project.job_gpus:
        raise JobRejected(f"the job asks for {gpus} GPU(s) but project {project.slug!r} may use "
                          f"{project.job_gpus} at once; ask for fewer")
    if settings.backend == "kubernetes":
        if plan.datasets and not k8s_reads_allowed(settings):
            raise JobRejected(f"project {project.slug!r} has datasets, and this deployment runs no observer of "
                              "dataset reads on its nodes (k8s_read_observer); an admin deploys it, or accepts "
                              "unobserved reads with k8s_unobserved_reads = true")
    elif gpus > len(host_devices(settings)):
        raise JobRejected(f"the job asks for {gpus} GPU(s) but this host has {len(host_devices(settings))}")
    if cpu > project.job_cpu or mem > project.job_mem_mb:
        raise JobRejected(f"the job asks for {cpu:g} CPU and {mem} MiB, more than project {project.slug!r}'s "
                          f"whole batch quota ({project.job_cpu:g} CPU, {project.job_mem_mb} MiB); ask for less")
    runtime = _number(body, "max_runtime", int, settings.jobs_default_runtime, 1, settings.jobs_max_runtime, " s")
    name = _text(str(body.get("name") or "")[:128], "name")
    params = body.get("params")
    payload = code = None
    target = body.get("target") or ""
    if kind in ("notebook", "script"):
        if not isinstance(target, str) or not target:
            raise JobRejected(f"a {kind} job needs \"target\": the path of the {kind} in the workspace")
        target, code = _read_target(db, settings, user, project.slug, target, reads)
        if kind == "notebook":
            if not target.endswith(".ipynb"):
                raise JobRejected(f"{target!r} is not a notebook (.ipynb)")
            try:
                json.loads(code)["cells"]
            except (ValueError, KeyError, TypeError):
                raise JobRejected(f"{target!r} is not a readable notebook") from None
            params = params if params is not None else {}
            if not isinstance(params, dict) or not all(isinstance(k, str) and k.isidentifier() for k in params):
                raise JobRejected("notebook parameters must be a JSON object of name: value, names being "
                                  "Python identifiers")
            if _depth(params) > MAX_PARAMS_DEPTH or len(json.dumps(params)) > MAX_PARAMS:
                raise JobRejected(f"notebook parameters must be at most {MAX_PARAMS // 1024} KiB of JSON, nested at "
                                  f"most {MAX_PARAMS_DEPTH} deep: keep larger inputs in a workspace file")
        else:
            params = {} if params is None else params
            args = params.get("args", []) if isinstance(params, dict) else params
            if not isinstance(args, list) or not all(isinstance(a, (str, int, float)) for a in args):
                raise JobRejected("script arguments must be a list of strings or numbers (params.args)")
            params = {"args": [str(a) for a in args]}
    elif kind == "function":
        try:
            payload = base64.b64decode(body.get("payload") or "", validate=True)
        except (ValueError, TypeError):
            raise JobRejected("a function job needs \"payload\": base64 of cloudpickle (func, args, kwargs)") from None
        if not payload or len(payload) > MAX_PAYLOAD:
            raise JobRejected(f"the function payload must be 1 byte to {MAX_PAYLOAD // 2**20} MiB")
        target = _text(str(target or "function")[:200], "target")
        params = {}
    else:  # cluster: interactive Dask workers held until cancelled or the run-time limit
        workers = _number(params if isinstance(params, dict) else {}, "workers", int, 1, 1, MAX_CLUSTER_WORKERS)
        cpu_all, mem_all = cpu * workers, mem * workers
        if cpu_all > project.job_cpu or mem_all > project.job_mem_mb or gpus * workers > project.job_gpus:
            raise JobRejected(f"{workers} workers of {cpu:g} CPU / {mem} MiB exceed project {project.slug!r}'s "
                              f"batch quota ({project.job_cpu:g} CPU, {project.job_mem_mb} MiB); ask for fewer")
        params, target = {"workers": workers}, "dask-cluster"

    if as_kubernetes_job(settings, kind) and not files_on_host(settings):
        carried = len(payload or b"") + (len(code) if lane == "held" and code is not None else 0) + \
            len(json.dumps(params or {}))
        if carried > KUBE_JOB_INPUTS_MAX:
            what = "function's payload" if kind == "function" else f"held {kind} and its parameters"
            raise JobRejected(f"the {what} weigh {carried / 1024:.0f} KiB; this deployment runs each job as a "
                              f"Kubernetes Job, whose inputs travel in a Secret of at most "
                              f"{KUBE_JOB_INPUTS_MAX // 1024} KiB: keep large data in the workspace and read it "
                              "from there")
    account = get_account(db, user)
    job = Job(project_id=project.id, account_id=account.id, name=name, kind=kind, target=target,
              params=params or {}, profile=plan.profile, cpu=cpu, mem_mb=mem, gpus=gpus,
              max_runtime_s=runtime, state="queued", reason="", attempts=0, cancel_requested=False,
              worker="", devices="", usage={}, lane=lane)
    if kind == "cluster":  # the quota and the executor count all its workers
        job.cpu, job.mem_mb, job.gpus = cpu * params["workers"], mem * params["workers"], gpus * params["workers"]
    held_code = code if lane == "held" else None

    def keep() -> None:
        if files_on_host(settings):
            make_outdir(settings, project, job.id, payload, lane, code=held_code,
                        code_name=os.path.basename(target))
        else:   # the worker makes the folder: the hub cannot reach the claim
            kept = {"function.pkl": payload} if payload is not None else {}
            if held_code is not None:
                kept[f"{INPUT_DIR}/{os.path.basename(target)}"] = held_code
            inputs.stash(settings, job.id, kept)
    return job, keep, len(payload or b"") + len(held_code or b"")


def _text(value: str, what: str) -> str:
    """``value``, if it can be stored (a JSON string may hold half of a surrogate pair)."""
    if not encodes(value):
        raise JobRejected(f"{what} must be text (it holds an unpaired surrogate)")
    return value


def _depth(value, limit: int = MAX_PARAMS_DEPTH + 1) -> int:
    """How deep ``value`` nests (counted no further than ``limit``)."""
    if limit <= 0 or not isinstance(value, (dict, list)):
        return 0
    items = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(v, limit - 1) for v in items), default=0)


def _read_target(db: Session, settings: Settings, user: str, project: str, target: str,
                 reads: dict | None) -> tuple[str, bytes]:
    """``read_workspace_file`` of a submission's script or notebook; within a list (``reads``)
    each path once, and no more than MAX_LIST_BYTES of them all."""
    if reads is None:
        return read_workspace_file(workspace_folder(db, settings, user, project), target)
    key = (project, workspace_relpath(target))   # however a session spells it
    if key not in reads:
        reads[key] = read_workspace_file(workspace_folder(db, settings, user, project), target)
        if sum(len(code) for _, code in reads.values()) > MAX_LIST_BYTES:
            raise JobRejected(f"the list's scripts and notebooks weigh more than {MAX_LIST_BYTES // 2**20} MiB "
                              "together; submit it in shorter lists")
    return reads[key]


def outdir_mode(lane: str) -> int:
    """A job's folder's mode: the project's group reads an open job's (setgid: its files stay the
    group's); a held job's only its workers."""
    return 0o700 if lane == "held" else 0o2770


def run_target(job: Job) -> str:
    """The path a job's runner executes: its workspace file, or a held job's copy of it."""
    if job.lane == "held" and job.kind in HELD_KINDS:
        return f"{outdir_inside(job.id, 'held')}/{INPUT_DIR}/{os.path.basename(job.target)}"
    return job.target


def make_outdir(settings: Settings, project: Project, job_id: int, payload: bytes | None = None,
                lane: str = "open", *, code: bytes | None = None, code_name: str = "") -> Path:
    """The job's folder: in the workspace (the project's workers write it, members read it), or,
    held, beside it (the project's workers only), with a held job's copy of its code."""
    from ..plan import project_uid

    base, rel = job_folder(settings, project.slug, job_id, lane)
    uid, gid = project_uid(settings, project.id), settings.gid_base + project.id
    mode = outdir_mode(lane)
    try:
        fd = beneath.makedirs_beneath(base, rel, uid=uid, gid=gid, mode=mode, fresh=True)
    except OSError as e:
        where = "the held folder" if lane == "held" else "the project workspace"
        raise JobRejected(f"cannot make the job's folder in {where}: 'jobs' and its folders must be real folders, "
                          f"not links or files ({e.strerror}); rename what is in the way and submit again") from None
    try:
        _write_inputs(fd, payload, code, code_name, uid, gid)
    except OSError as e:   # the workspace is the members': full, over its quota
        raise JobRejected(f"cannot write the job's inputs into its folder ({e.strerror}); make room in "
                          "the workspace and submit again") from None
    finally:
        os.close(fd)
    return base / rel


def _write_inputs(fd: int, payload: bytes | None, code: bytes | None, code_name: str, uid: int, gid: int) -> None:
    """A function's payload, or a held job's copy of its code, into the job's folder ``fd``."""
    if payload is not None:
        beneath.write_beneath(fd, "function.pkl", payload, uid=uid, gid=gid, mode=0o640)
    if code is not None:
        sub = beneath.mkdir_beneath(fd, INPUT_DIR, uid=uid, gid=gid, mode=0o700, fresh=True)
        try:
            beneath.write_beneath(sub, code_name, code, uid=uid, gid=gid, mode=0o400)
            os.fchmod(sub, 0o500)
        finally:
            os.close(sub)


def _visible_job(db: Session, settings: Settings, user: str, job_id: int) -> Job:
    """A job of one of ``user``'s projects (members see each other's jobs, like the workspace)."""
    job = get_by_id(db, Job, job_id)
    if job is None:
        raise NotFound(f"there is no job {job_id}")
    try:
        build_plan(db, settings, user, job.project.slug, None, role="worker")
    except PlanRefused:
        raise NotFound(f"there is no job {job_id}") from None  # never tell non-members it exists
    return job


def get(db: Session, settings: Settings, user: str, job_id: int) -> Job:
    return _visible_job(db, settings, user, job_id)


def list_jobs(db: Session, settings: Settings, user: str, project_slug: str | None = None,
              limit: int = 200, state: str | None = None) -> list[Job]:
    from ..projects import projects_of

    slugs = [p.slug for p in projects_of(db, user)]
    if project_slug:
        if project_slug not in slugs:
            raise PlanRefused(f"you are not a member of a project named {project_slug!r}")
        slugs = [project_slug]
    query = select(Job).join(Project).where(Project.slug.in_(slugs))
    if state:
        query = query.where(Job.state == state)
    rows = db.scalars(query.order_by(Job.id.desc()).limit(limit)).all()
    return list(rows)


def cancel(db: Session, settings: Settings, user: str, job_id: int) -> Job:
    """Queued: cancelled at once. Running: the engine kills its process group."""
    return request_cancel(_visible_job(db, settings, user, job_id), user)


def request_cancel(job: Job, by: str) -> Job:
    """Cancel ``job`` on behalf of ``by`` (a member, or "an admin"), whoever checked the right to."""
    if job.state in JOB_FINAL:
        raise JobRejected(f"job {job.id} already ended ({job.state})")
    if job.state == "queued":
        job.state, job.reason, job.finished_at = "cancelled", f"cancelled by {by} while queued", utcnow()
    else:
        job.cancel_requested = True
        job.reason = f"cancel requested by {by}"
    return job


def rerun(db: Session, settings: Settings, user: str, job_id: int) -> Job:
    """Queue the same job again (same target, parameters and resources) as a new job."""
    old = _visible_job(db, settings, user, job_id)
    body = {"project": old.project.slug, "kind": old.kind, "profile": old.profile, "name": old.name,
            "target": old.target, "params": old.params, "max_runtime": old.max_runtime_s, "lane": old.lane}
    if old.kind == "cluster":
        workers = old.params.get("workers", 1)
        body.update(cpu=old.cpu / workers, mem_mb=old.mem_mb // workers, gpus=old.gpus // workers)
    else:
        body.update(cpu=old.cpu, mem_mb=old.mem_mb, gpus=old.gpus)
    if old.kind == "function":
        kept = inputs.load(settings, old.id).get("function.pkl")   # not started yet (claims)
        if kept is None:
            folder = job_files(db, settings, old, user)
            try:
                kept = base64.b64encode(folder.files.read(folder.base, f"{folder.rel}/function.pkl", 0,
                                                          MAX_PAYLOAD + 1)).decode()
            except OSError:
                raise JobRejected(f"job {job_id}'s function is no longer in its folder; submit it again") from None
        body["payload"] = kept
    job = submit(db, settings, user, body)
    job.rerun_of = old.id
    return job


def open_asks(db: Session, project_id: int) -> tuple[list[Ask], list[Ask]]:
    """(queued, running) of a project as ``Ask`` tuples, queued by id: five columns per job, no
    ORM objects (a long queue is read on every engine tick and every listing)."""
    rows = db.execute(select(Job.id, Job.account_id, Job.cpu, Job.mem_mb, Job.gpus, Job.state)
                      .where(Job.project_id == project_id, Job.state.in_(("queued", "running")))
                      .order_by(Job.id)).all()
    return ([Ask(*r[:5]) for r in rows if r[5] == "queued"], [Ask(*r[:5]) for r in rows if r[5] == "running"])


def positions(db: Session, project_id: int) -> dict[int, int]:
    """Job id -> 1-based place in its project's queue (the order the engine serves)."""
    queued, running = open_asks(db, project_id)
    order = fair_order(queued, running)
    return {a.id: i + 1 for i, a in enumerate(order)}


def read_log(settings: Settings, job: Job, offset: int = 0, limit: int = 1 << 20, *,
             folder: Folder | None = None) -> tuple[str, int]:
    """(text from ``offset``, next offset) of the job's log (a held job's too: callers that answer
    members use ``member_log``), read from ``folder`` (``job_files``; default the host's)."""
    folder = folder or _host_folder(settings, job)
    try:
        data = folder.files.read(folder.base, f"{folder.rel}/log.txt", max(0, offset), limit)
    except OSError:  # not yet written (or not a plain file: never read through a link)
        return "", offset
    return data.decode(errors="replace"), offset + len(data)


def member_log(settings: Settings, job: Job, offset: int = 0, *, folder: Folder | None = None) -> tuple[str, int]:
    """What members read of the log: a held job's is withheld (it is the job's own output)."""
    if job.lane == "held":
        return (HELD_NOTE.format(outdir=outdir_inside(job.id, "held")) + "\n" if offset == 0 else ""), 1
    return read_log(settings, job, offset, folder=folder)


def progress(settings: Settings, job: Job, *, folder: Folder | None = None) -> dict | None:
    if job.lane == "held":  # written by the job: held like its other files
        return None
    folder = folder or _host_folder(settings, job)
    try:
        return json.loads(folder.files.read(folder.base, f"{folder.rel}/progress.json", 0, 64 * 1024))
    except (OSError, ValueError):
        return None


def outputs(settings: Settings, job: Job, *, folder: Folder | None = None) -> list[dict]:
    if job.lane == "held":  # not even names: the job chose them
        return []
    folder = folder or _host_folder(settings, job)
    try:
        found = folder.files.walk(folder.base, folder.rel)   # links not followed
    except OSError:
        return []
    return [{"path": f"{outdir_inside(job.id)}/{rel}", "size": size} for rel, size in sorted(found)
            if not os.path.basename(rel).startswith(".") and rel != "progress.json"]


def to_dict(settings: Settings, job: Job, position: int | None = None, *, detail: bool = False,
            folder: Folder | None = None) -> dict:
    """The job as the API shows it; with ``detail``, its progress and outputs too, read from
    ``folder`` (``job_files``; default the host's)."""
    data = {
        "id": job.id, "name": job.name, "project": job.project.slug, "user": job.account.name,
        "kind": job.kind, "target": job.target, "params": job.params, "profile": job.profile,
        "cpu": job.cpu, "mem_mb": job.mem_mb, "gpus": job.gpus, "max_runtime": job.max_runtime_s,
        "state": job.state, "reason": job.reason, "exit_code": job.exit_code, "attempts": job.attempts,
        "cancel_requested": job.cancel_requested, "devices": job.devices, "usage": job.usage,
        "rerun_of": job.rerun_of, "position": position, "outdir": outdir_inside(job.id, job.lane),
        "lane": job.lane,
        "submitted_at": job.submitted_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }
    if job.kind == "cluster" and job.state == "running":  # where the session's Dask client connects
        data["scheduler"] = scheduler_address(settings, pool_for(job.project.slug, job.lane))
    if detail:
        data.update(folder_details(settings, job, folder=folder))
    return data


def folder_details(settings: Settings, job: Job, *, folder: Folder | None = None) -> dict:
    """What the detail of a job shows of its folder (its progress and outputs), read from
    ``folder``; it needs no database (the API reads it once its transaction has ended)."""
    data = {"progress": progress(settings, job, folder=folder), "outputs": outputs(settings, job, folder=folder)}
    if job.lane == "held":
        data["held"] = HELD_NOTE.format(outdir=outdir_inside(job.id, "held"))
    return data


def scheduler_file(settings: Settings, pool: str) -> Path:
    """Where the engine writes the address of a pool's running scheduler (the sandbox's is
    127.0.0.1 in the island; a container's is its own on the project's network)."""
    return jobs_run_dir(settings, pool) / "scheduler.address"


def scheduler_address(settings: Settings, pool: str) -> str | None:
    try:
        return scheduler_file(settings, pool).read_text().strip() or None
    except OSError:
        return None


def wake_socket(settings: Settings) -> Path:
    """The engine's doorbell (a datagram socket). Its directory is bound into the projects'
    schedulers, so a socket re-created by a restarted engine is still the one they ring."""
    return settings.run_dir / "doorbell" / "wake.sock"   # beside run_dir/jobs/<project>: no slug can clash


#: A wake that says only that jobs were queued in some projects (``wake``): their slugs follow,
#: comma-separated.
QUEUED_IN = b"queued:"
#: The longest ring the engine reads; a longer one would be cut, so it is sent as plain news.
MAX_RING = 64


def wake(settings: Settings, queued_in: Iterable[str] = ()) -> None:
    """Tell the engine there is news (best effort, never waiting: it also looks by itself every
    second). ``queued_in``: the news is only jobs queued in these projects, which the engine need
    not look at while the last look found all their slots taken."""
    try:
        projects = sorted(set(queued_in))
        ring = QUEUED_IN + ",".join(projects).encode() if projects else b"!"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            # a full queue (the engine busy, or rung by many) must not hold up the hub's loop
            s.sendto(ring if len(ring) <= MAX_RING else b"!", socket.MSG_DONTWAIT, str(wake_socket(settings)))
    except OSError:
        pass

