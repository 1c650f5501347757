"""SessionPlan: everything one session (or batch worker) may touch, decided once from the database.

Backends render a plan into their own terms (a bubblewrap command line, a container config, a
pod) and add nothing of their own: a test of the plan is a test of every backend's policy. What a
user asks for (project, profile) only *selects* within what the database allows; it can never
widen the plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from .accounts import get_account
from .db import Project
from .errors import VREError
from .settings import Settings

HOME = "/home/jovyan"
WORKSPACE = f"{HOME}/project"
DATA_ROOT = "/data"
CATALOG_ROOT = "/opt/vre/catalog"
#: The session's own runtime directory: hub/ (the hub's socket, read-only), session/ (the server's
#: socket), spool/ (audit events not yet at the hub).
INNER_RUN = "/run/vre"
INNER_HUB_SOCKET = f"{INNER_RUN}/hub/hub.sock"
INNER_SOCKET = f"{INNER_RUN}/session/jupyter.sock"
MANIFEST = "/etc/vre/session.json"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "TORCH_NUM_THREADS")


class PlanRefused(VREError):
    """The user may not have this session; the message says why (shown to them as is)."""


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    readonly: bool


@dataclass(frozen=True)
class SessionPlan:
    user: str
    project: str
    profile: str
    role: str                   # "session" or "worker" (a batch worker, shared by the project)
    session_id: str             # stable per (user, project) for sessions; names cgroups and sockets
                                # (the job service names each worker: <project>-worker-<n>)
    uid: int                    # host uid the session runs as
    gid: int                    # the project's group: shared workspace access
    cpu: float
    mem_mb: int
    gpus: int
    network: str                # the project's island (a network namespace / network / policy)
    datasets: tuple[str, ...]
    mounts: tuple[Mount, ...]
    audit_cells: bool = False   # record the code of every executed cell
    gpu_shared: bool = False    # its GPUs may be shared with other sharing holders
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def threads(self) -> int:
        return max(1, math.ceil(self.cpu))

    def manifest(self) -> dict:
        """What the session may know about itself (written into it read-only)."""
        return {
            "user": self.user, "project": self.project, "profile": self.profile, "role": self.role,
            "session_id": self.session_id, "cpu": self.cpu, "mem_mb": self.mem_mb, "gpus": self.gpus,
            "audit_cells": self.audit_cells,
            "datasets": [
                {"slug": s, "path": f"{DATA_ROOT}/{s}", "catalog": f"{CATALOG_ROOT}/{s}"} for s in self.datasets
            ],
        }


def island_name(settings: Settings, project_slug: str) -> str:
    return f"{settings.instance}-{project_slug}"


def project_uid(settings: Settings, project_id: int) -> int:
    """Host uid of a project's batch workers and scheduler (numbered like the project's gid)."""
    return settings.gid_base + project_id


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
    if role == "worker":
        # Batch workers are the project's, shared by its members like the workspace: they run as
        # the project's service identity with a home of their own, never a member's private home.
        home = settings.projects_dir / project.slug / "worker-home"
        uid = project_uid(settings, project.id)
    datasets = sorted((g.dataset for g in project.grants), key=lambda d: d.slug)
    mounts = [Mount(Path(d.path), f"{DATA_ROOT}/{d.slug}", True) for d in datasets]
    mounts += [Mount(settings.catalog_dir / d.slug, f"{CATALOG_ROOT}/{d.slug}", True) for d in datasets]
    mounts += [Mount(home, HOME, False), Mount(workspace, WORKSPACE, False)]

    session_id = f"{user}-{project.slug}" if role == "session" else f"{project.slug}-{role}"
    plan_env = {
        "VRE_PROJECT": project.slug,
        "VRE_PROFILE": profile.name,
        "VRE_SESSION_ID": session_id,
        "VRE_DATASETS": ",".join(d.slug for d in datasets),
        "HOME": HOME,
        "USER": user,
    }
    if project.audit_cells:
        plan_env["VRE_AUDIT_CELLS"] = "1"
    threads = str(max(1, math.ceil(profile.cpu)))
    plan_env.update({var: threads for var in THREAD_VARS})
    return SessionPlan(
        user=user, project=project.slug, profile=profile.name, role=role, session_id=session_id,
        uid=uid, gid=settings.gid_base + project.id,
        cpu=profile.cpu, mem_mb=profile.mem_mb, gpus=profile.gpus,
        network=island_name(settings, project.slug),
        datasets=tuple(d.slug for d in datasets), mounts=tuple(mounts), env=plan_env,
        audit_cells=project.audit_cells, gpu_shared=profile.gpu_shared,
        labels={"vre.user": user, "vre.project": project.slug, "vre.session": session_id, "vre.role": role},
    )
