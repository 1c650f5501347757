"""SessionPlan: everything one session (or batch worker) may touch, decided once from the database.

Backends render a plan into their own terms (a bubblewrap command line, a container config, a
pod) and add nothing of their own: a test of the plan is a test of every backend's policy. What a
user asks for (project, profile) only *selects* within what the database allows; it can never
widen the plan.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from .accounts import get_account
from .db import PlanGeneration, Project, as_utc, utcnow
from .errors import VREError
from .hostfiles import unix_url
from .projects import datasets_for
from .settings import Settings

HOME = "/home/jovyan"
WORKSPACE = f"{HOME}/project"
DATA_ROOT = "/data"
CATALOG_ROOT = "/opt/vre/catalog"
MANIFEST = "/etc/vre/session.json"
#: The runtime directory inside a session or worker: hub/ (the hub's sockets, read-only), session/
#: (the server's socket), spool/ (audit events not yet at the hub), agent/ and doorbell/ (a
#: project's Dask scheduler: the job engine's way in, and its way to ring the engine).
INNER_RUN = "/run/vre"
INNER_HUB_SOCKET = f"{INNER_RUN}/hub/hub.sock"
#: The VRE service's socket beside it (vre.api.service): the audit ingest and the batch queue.
INNER_SERVICE_SOCKET = f"{INNER_RUN}/hub/vre.sock"
#: The VRE service's API, as sessions reach it (``VRE_API_URL``: a unix-socket URL and this path).
SERVICE_API_PATH = "/services/vre/api"
INNER_SOCKET = f"{INNER_RUN}/session/jupyter.sock"
INNER_AGENT_DIR = f"{INNER_RUN}/agent"
#: The agent's TCP port where no socket can be shared (a scheduler pod): bearer token, hub pods only.
AGENT_PORT = 8785
INNER_DOORBELL = f"{INNER_RUN}/doorbell"
AUDIT_INGEST_PATH = f"{SERVICE_API_PATH}/audit/events"
#: Held jobs' folders inside a held worker (``<projects_dir>/<project>/held`` on the host): their
#: logs and outputs, which no session mounts; they leave only through the airlock.
HELD_ROOT = "/held"
#: The thread pools sized to the CPU grant (the one rule: ceil(cpu), at least 1).
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "TORCH_NUM_THREADS")
#: session; worker (the project's shared batch workers, which its sessions reach through Dask);
#: held (a held job's worker: batch-only data, an island of its own, see ``db.JOB_LANES``);
#: scheduler (a pool's Dask scheduler).
ROLES = ("session", "worker", "held", "scheduler")


class PlanRefused(VREError):
    """The user may not have this session; the message says why (shown to them as is)."""


@dataclass(frozen=True)
class Mount:
    """``source`` on the host appears at ``target`` inside.

    ``kind`` says what it is, so a backend knows what to prepare and a test what to expect:
    ``dataset``, ``catalog``, ``home``, ``workspace`` (from the database); ``file`` (written by the
    hub from the plan before start: manifest, passwd, group); ``private`` (a fresh directory owned
    by the plan's uid: the server's socket, the audit spool, the scheduler's agent socket);
    ``hub`` (a directory the hub owns, reachable read-only: its sockets, the engine's doorbell);
    ``held`` (held jobs' folders, in held workers only).
    """
    source: Path
    target: str
    readonly: bool
    kind: str = "dataset"


def thread_limits(cpu: float) -> dict[str, str]:
    """Thread-pool sizes for a CPU grant: numerical libraries must not start a thread per host core."""
    threads = str(max(1, math.ceil(cpu)))
    return {var: threads for var in THREAD_VARS}


@dataclass(frozen=True)
class SessionPlan:
    """Everything one session, batch worker or project scheduler may touch; backends only translate it.

    Per run, a backend adds only what the run itself creates: the GPU devices leased for it, the
    credentials minted for it (hub API token, relay credential), and its own executable path.
    """
    user: str
    project: str
    profile: str
    role: str                   # one of ROLES
    session_id: str             # stable per (user, project) for sessions; names cgroups, sockets, containers
    uid: int                    # host uid it runs as
    gid: int                    # the project's group: shared workspace access
    cpu: float
    mem_mb: int
    gpus: int
    network: str                # the project's island (a network namespace / network / policy)
    datasets: tuple[str, ...]
    mounts: tuple[Mount, ...]   # every mount, the runtime ones included
    audit_cells: bool = False   # record the code of every executed cell
    downloads: str = "none"     # what may leave through the browser as raw files (vre.access.policy)
    egress_cap: int = 0         # bytes per member and day to the browser; 0: no cap
    gpu_shared: bool = False    # its GPUs may be shared with other sharing holders
    #: Node labels its pod must land on (the profile's; Kubernetes only), as (label, value) pairs.
    node_selector: tuple[tuple[str, str], ...] = ()
    #: Granted datasets whose files it does not get (batch-only grants, in a session), as
    #: (slug, catalogue record): a session lists them as records, without files.
    catalogue_only: tuple[tuple[str, dict], ...] = ()
    env: dict[str, str] = field(default_factory=dict)   # the base environment
    labels: dict[str, str] = field(default_factory=dict)
    run_dir: Path | None = None  # host directory of the runtime mounts (files, sockets, spool)
    #: The batch pool it belongs to (workers and schedulers): the project's slug for the shared
    #: workers, ``<slug>.held`` for held ones (no slug has a dot); names its processes and folders.
    pool: str = ""
    #: The job (id, user) a batch worker is started for: its reads are recorded as that job's from
    #: its first (hostview's mark, the pod's annotations), so its first hand-out needs no word.
    job: tuple[int, str] | None = None

    @property
    def threads(self) -> int:
        return max(1, math.ceil(self.cpu))

    def mount(self, target: str) -> Mount:
        return next(m for m in self.mounts if m.target == target)

    def manifest(self) -> dict:
        """What the session may know about itself (written into it read-only)."""
        return {
            "user": self.user, "project": self.project, "profile": self.profile, "role": self.role,
            "session_id": self.session_id, "cpu": self.cpu, "mem_mb": self.mem_mb, "gpus": self.gpus,
            "threads": self.threads, "audit_cells": self.audit_cells,
            "datasets": [
                {"slug": s, "path": f"{DATA_ROOT}/{s}", "catalog": f"{CATALOG_ROOT}/{s}"} for s in self.datasets
            ],
            "catalogue_only": [{"slug": s, "mode": "batch-only", "record": r} for s, r in self.catalogue_only],
        }

    # -- batch variants --------------------------------------------------------------------
    def for_worker(self, name: str, *, cpu: float, mem_mb: int, gpus: int,
                   job: tuple[int, str] | None = None) -> "SessionPlan":
        """A batch worker of this pool (from a ``worker`` or ``held`` plan) with one job's
        resources, started for ``job`` (id, user) or for none."""
        self._require_batch_base()
        run = self.run_dir / "workers" / name
        return replace(self, session_id=name, cpu=cpu, mem_mb=mem_mb, gpus=gpus, run_dir=run, job=job,
                       mounts=_data_mounts(self) + runtime_mounts("worker", run, None),
                       env={**self.env, **thread_limits(cpu)},
                       labels={**self.labels, "vre.session": name})

    def for_scheduler(self, name: str, doorbell: Path) -> "SessionPlan":
        """The project's Dask scheduler: no data and no GPU (it never runs jobs), its agent's socket, and the
        job engine's ``doorbell`` socket (its directory: a restarted engine re-creates the socket)."""
        self._require_batch_base()
        run = self.run_dir / "scheduler"
        mounts = tuple(m for m in _data_mounts(self) if m.kind in ("home", "workspace"))
        return replace(self, session_id=name, role="scheduler", datasets=(), catalogue_only=(), run_dir=run, gpus=0,
                       mounts=mounts + runtime_mounts("scheduler", run, doorbell.parent),
                       env={**self.env, "VRE_ROLE": "scheduler", "VRE_AGENT_SOCKET": f"{INNER_AGENT_DIR}/agent.sock",
                            "VRE_ENGINE_WAKE": f"{INNER_DOORBELL}/{doorbell.name}",
                            # nothing a job wrote into the home it shares runs at the scheduler's
                            # start (the engine waits for that start): no user site, no user Dask config
                            "PYTHONNOUSERSITE": "1", "DASK_CONFIG": "/etc/dask"},
                       labels={**self.labels, "vre.session": name, "vre.role": "scheduler"})

    def _require_batch_base(self) -> None:
        if self.role not in ("worker", "held") or self.run_dir is None:
            raise ValueError("batch variants are made from a plan built with role='worker' or 'held'")


def _data_mounts(plan: SessionPlan) -> tuple[Mount, ...]:
    return tuple(m for m in plan.mounts if m.kind in ("dataset", "catalog", "home", "workspace", "held"))


def runtime_mounts(role: str, run: Path, hub_dir: Path | None) -> tuple[Mount, ...]:
    """The runtime mounts of a role: identity and manifest files; for sessions the hub's socket
    directory (the directory, not the socket: a restarted hub recreates the socket), the server's
    socket and the audit spool; for schedulers the agent's socket and the engine's doorbell."""
    mounts = [Mount(run / "session.json", MANIFEST, True, "file"),
              Mount(run / "passwd", "/etc/passwd", True, "file"),
              Mount(run / "group", "/etc/group", True, "file")]
    if role == "session":
        mounts += [Mount(hub_dir, f"{INNER_RUN}/hub", True, "hub"),
                   Mount(run / "sock", f"{INNER_RUN}/session", False, "private"),
                   Mount(run / "spool", f"{INNER_RUN}/spool", False, "private")]
    elif role == "scheduler":
        mounts += [Mount(run / "agent", INNER_AGENT_DIR, False, "private"),
                   Mount(hub_dir, INNER_DOORBELL, True, "hub")]
    return tuple(mounts)


def island_name(settings: Settings, pool: str) -> str:
    """The island of a project's sessions and shared workers (``pool`` = its slug), or of its held
    workers (``<slug>.held``): no session reaches the held one."""
    return f"{settings.instance}-{pool}"


def held_pool(project_slug: str) -> str:
    return f"{project_slug}.held"


def pool_for(project_slug: str, lane: str) -> str:
    """The pool whose workers run a project's jobs of ``lane`` (``db.JOB_LANES``)."""
    return held_pool(project_slug) if lane == "held" else project_slug


def held_dir(settings: Settings, project_slug: str) -> Path:
    """Host folder of a project's held jobs (``HELD_ROOT`` in its held workers; no session's mount)."""
    return settings.projects_dir / project_slug / "held"


def project_uid(settings: Settings, project_id: int) -> int:
    """Host uid of a project's batch workers and scheduler (numbered like the project's gid)."""
    return settings.gid_base + project_id


def jobs_run_dir(settings: Settings, pool: str) -> Path:
    """Host directory of a batch pool's runtime: ``scheduler/`` and ``workers/<name>/``."""
    return settings.run_dir / "jobs" / pool


def project_paths(settings: Settings, project_slug: str, user: str) -> tuple[Path, Path]:
    """(workspace, home) on the host. Homes are per project: nothing a user keeps in one project's
    home is visible from another project's sessions."""
    base = settings.projects_dir / project_slug
    return base / "workspace", base / "homes" / user


def build_plan(db: Session, settings: Settings, user: str, project_slug: str, profile_name: str | None,
               *, role: str = "session") -> SessionPlan:
    """The plan for ``user`` working in ``project_slug`` with ``profile_name`` (None: the first).

    Raises PlanRefused when the user is unknown or disabled, not a member, the project is
    expired or unknown, or the profile is not one of the project's.
    """
    if not project_slug:
        raise PlanRefused("choose a project: sessions are started per project (from the home page)")
    try:
        account = get_account(db, user)
    except VREError:
        raise PlanRefused(f"{user!r} has no VRE account") from None
    if account.disabled:
        raise PlanRefused(f"account {user!r} is disabled")
    project = db.scalar(select(Project).where(Project.slug == project_slug))
    if project is None or not any(m.account_id == account.id for m in project.members):
        # The same answer for "does not exist" and "not yours": project names are not disclosed.
        raise PlanRefused(f"you are not a member of a project named {project_slug!r}")
    if project.is_expired():
        raise PlanRefused(f"the permit of project {project.slug!r} expired on "
                          f"{project.expires_at:%Y-%m-%d %H:%M} UTC; ask an admin to extend it")
    if not project.profiles:
        raise PlanRefused(f"project {project.slug!r} has no resource profile yet; ask an admin to add one")
    if profile_name:
        profile = next((p for p in project.profiles if p.name == profile_name), None)
        if profile is None:
            raise PlanRefused(f"project {project.slug!r} has no profile {profile_name!r}; "
                              f"choose one of: {', '.join(p.name for p in project.profiles)}")
    else:  # the smallest profile without GPUs: scarce GPUs are only ever given when asked for
        profile = next((p for p in project.profiles if not p.gpus), project.profiles[0])

    workspace, home = project_paths(settings, project.slug, user)
    uid = settings.uid_base + account.id
    pool = project.slug
    if role in ("worker", "held"):
        # Batch workers are the project's, shared by its members like the workspace: they run as
        # the project's service identity with a home of their own, never a member's private home.
        # Held workers get another home: nothing they write reaches a worker sessions can drive.
        pool = held_pool(project.slug) if role == "held" else project.slug
        home = settings.projects_dir / project.slug / ("held-home" if role == "held" else "worker-home")
        uid = project_uid(settings, project.id)
        run = jobs_run_dir(settings, pool)   # the variants (for_worker, for_scheduler) live below
    elif role == "session":
        run = settings.sessions_run_dir / f"{user}-{project.slug}"
    else:
        raise ValueError(f"build_plan makes 'session', 'worker' and 'held' plans, not {role!r}")
    datasets, catalogue_only = datasets_for(project, role)
    mounts = [Mount(Path(d.path), f"{DATA_ROOT}/{d.slug}", True, "dataset") for d in datasets]
    mounts += [Mount(settings.catalog_dir / d.slug, f"{CATALOG_ROOT}/{d.slug}", True, "catalog") for d in datasets]
    mounts.append(Mount(home, HOME, False, "home"))
    if role == "held":
        # No workspace: a live folder that sessions write is a channel back to them even read-only
        # (a FIFO or socket planted there opens for writing; file-watch events show what a job
        # opened). A held job runs the copy of its code made at submission (jobs.service).
        mounts.append(Mount(held_dir(settings, project.slug), HELD_ROOT, False, "held"))
    else:
        mounts.append(Mount(workspace, WORKSPACE, False, "workspace"))
    mounts += runtime_mounts(role, run, settings.hub_socket_dir)

    session_id = f"{user}-{project.slug}" if role == "session" else f"{pool}-worker"
    env = {
        "VRE_PROJECT": project.slug,
        "VRE_PROFILE": profile.name,
        "VRE_SESSION_ID": session_id,
        "VRE_DATASETS": ",".join(d.slug for d in datasets),
        "VRE_SESSION": MANIFEST,
        "HOME": HOME,
        "USER": user,
        "LANG": "C.UTF-8",
        "JUPYTER_RUNTIME_DIR": "/tmp/jupyter-runtime",
        "PYTHONNOUSERSITE": "1",   # nothing under the home is imported by the server (or anything else)
        **thread_limits(profile.cpu),
    }
    if project.audit_cells:
        env["VRE_AUDIT_CELLS"] = "1"
    if role == "session":
        env.update({"SHELL": "/bin/bash", "VRE_AUDIT_URL": unix_url(INNER_SERVICE_SOCKET) + AUDIT_INGEST_PATH,
                    "VRE_API_URL": unix_url(INNER_SERVICE_SOCKET) + SERVICE_API_PATH,
                    "VRE_AUDIT_SPOOL": f"{INNER_RUN}/spool"})
    else:
        env.update({"VRE_ROLE": "worker", "VRE_LANE": "held" if role == "held" else "open",
                    "DASK_DISTRIBUTED__WORKER__DAEMON": "False", "MPLCONFIGDIR": "/tmp/matplotlib"})
        if role == "worker":
            env["VRE_WORKSPACE"] = WORKSPACE
    return SessionPlan(
        user=user, project=project.slug, profile=profile.name, role=role, session_id=session_id,
        uid=uid, gid=settings.gid_base + project.id,
        cpu=profile.cpu, mem_mb=profile.mem_mb, gpus=profile.gpus,
        network=island_name(settings, pool),
        datasets=tuple(d.slug for d in datasets), mounts=tuple(mounts), env=env,
        catalogue_only=tuple((d.slug, d.catalog or {}) for d in catalogue_only) if role == "session" else (),
        audit_cells=project.audit_cells, downloads=project.downloads, egress_cap=project.egress_cap,
        gpu_shared=profile.gpu_shared, node_selector=tuple(sorted((profile.node_selector or {}).items())),
        labels={"vre.user": user, "vre.project": project.slug, "vre.session": session_id, "vre.role": role},
        run_dir=run, pool=pool if role != "session" else "",
    )


class PlanCache:
    """Plans by (user, project, profile, role), kept while nothing they are built from changed.

    ``get`` reads the plan generation (one row, ``vre.db.PlanGeneration``): every change to
    accounts, datasets, projects, memberships, grants or profiles moves it on in the changing
    transaction, and then every cached plan is dropped, so a removed member, a disabled account
    or a revoked or changed grant is seen by the very next ``get``. Expiry needs no change to be
    seen: a plan is kept only until the first expiry ahead of it (the project's permit or one of
    its grants), checked against the clock on each hit. Refusals are not cached (``build_plan``
    says why). Thread-safe: the hub's polls of running sessions share one from worker threads."""

    def __init__(self):
        self._generation: int | None = None
        self._plans: dict[tuple, tuple[SessionPlan, object]] = {}
        self._lock = threading.Lock()

    def get(self, db: Session, settings: Settings, user: str, project_slug: str, profile_name: str | None,
            *, role: str = "session") -> SessionPlan:
        generation = db.scalar(select(PlanGeneration.n).where(PlanGeneration.id == 1))
        key = (user, project_slug, profile_name, role)
        with self._lock:
            if generation is None or generation != self._generation:
                self._plans.clear()
                self._generation = generation
            hit = self._plans.pop(key, None)
            if hit is not None and generation is not None:
                plan, expires_at = hit
                if expires_at is None or as_utc(expires_at) > utcnow():
                    self._plans[key] = hit
                    return plan
                # expired: build_plan says so
        plan = build_plan(db, settings, user, project_slug, profile_name, role=role)
        expires_at = valid_until(db.scalar(select(Project).where(Project.slug == project_slug)))
        with self._lock:
            if generation is not None and generation == self._generation:   # nothing changed meanwhile
                self._plans[key] = (plan, expires_at)
        return plan


def valid_until(project: Project) -> dt.datetime | None:
    """When a plan of ``project`` built now stops being right without any change to the
    database: the first expiry ahead (its permit, or one of its grants); None: never."""
    now = utcnow()
    ahead = [as_utc(t) for t in (project.expires_at, *(g.expires_at for g in project.grants))
             if t is not None and as_utc(t) > now]
    return min(ahead, default=None)
