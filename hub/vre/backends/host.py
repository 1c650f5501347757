"""What a plan needs on the host before any backend starts it, the same for sessions, batch
workers and schedulers: the home and workspace with their owners, and a fresh run directory
holding the plan's runtime mounts (the files the hub writes, the private socket and spool
directories, the hub-owned directories it may reach), and held workers' folder."""

from __future__ import annotations

import json
import os
import shutil

from .. import beneath
from ..plan import MANIFEST, SessionPlan


def prepare_home_and_workspace(plan: SessionPlan) -> None:
    """Create the plan's home and the project workspace (held plans have none) with the right
    owners (idempotent)."""
    workspace = next((m.source for m in plan.mounts if m.kind == "workspace"), None)
    home = next((m.source for m in plan.mounts if m.kind == "home"), None)
    if home is None:   # a ValueError, not StopIteration: that one hangs a caller awaiting asyncio.to_thread
        raise ValueError(f"plan {plan.session_id} mounts no home")
    if workspace is not None:
        workspace.mkdir(parents=True, exist_ok=True)
        os.chown(workspace, 0, plan.gid)
        os.chmod(workspace, 0o2770)  # setgid: files stay in the project's group
    home.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(home.parent, 0o755)
    home.mkdir(exist_ok=True)
    try:
        if workspace is not None:  # the workspace's mount point, made without following a link
            fd = beneath.makedirs_beneath(home, "project", uid=plan.uid, gid=plan.gid, mode=0o755)
            os.close(fd)
    except PermissionError:
        # a hub without CAP_DAC_OVERRIDE (the chart's pod) cannot look into a home it made before
        # (0700, the member's); a container runtime makes a missing mount point itself
        if not home.is_dir():
            raise
    os.chown(home, plan.uid, plan.gid)
    os.chmod(home, 0o700)


def prepare_host(plan: SessionPlan, identity: dict[str, str]) -> None:
    """Home, workspace and a fresh run directory for ``plan``.

    ``identity`` holds the text of the runtime files other than the manifest (``passwd``,
    ``group``): how the plan's uid looks inside is the backend's translation (a user namespace
    maps it in a sandbox; a container sees the host uid).
    """
    prepare_home_and_workspace(plan)
    run = plan.run_dir
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    os.chmod(run, 0o755)
    for m in plan.mounts:
        if m.kind == "file":
            text = json.dumps(plan.manifest(), indent=2) if m.target == MANIFEST else identity[m.source.name]
            m.source.write_text(text)
            os.chmod(m.source, 0o644)
        elif m.kind == "private":  # only the plan's uid: its socket, its spool
            m.source.mkdir(parents=True)
            os.chown(m.source, plan.uid, plan.gid)
            os.chmod(m.source, 0o700)
        elif m.kind == "hub" and not m.source.is_dir():  # the hub's own; made by the hub when missing
            m.source.mkdir(parents=True, mode=0o755)
    prepare_held_folder(plan)


def prepare_held_folder(plan: SessionPlan) -> None:
    """Held jobs' folders (a held plan's): the project's workers only, no session's mount."""
    for m in plan.mounts:
        if m.kind == "held":
            m.source.mkdir(parents=True, exist_ok=True)
            os.chown(m.source, plan.uid, plan.gid)
            os.chmod(m.source, 0o700)
