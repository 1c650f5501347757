"""Bubblewrap: how a plan becomes a sandbox on this host, free of JupyterHub, for sessions, batch
workers and schedulers alike (``sandbox_argv`` renders, ``launch`` starts; the session spawner is
:mod:`vre.backends.sandbox`).
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
from pathlib import Path

from ..gpus import device_nodes
from ..hostview.client import HostviewError
from ..plan import HOME, SessionPlan
from ..settings import Settings
from . import gate, netns
from .cgroups import SessionCgroup

INNER_UID, INNER_GID = 1000, 100
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf", "hosts",
             "ssl", "ca-certificates", "alternatives", "mime.types", "fonts", "protocols", "services")


def identity_files(plan: SessionPlan) -> dict[str, str]:
    """/etc/passwd and /etc/group inside a sandbox: the user namespace maps the plan's uid to jovyan."""
    return {"passwd": f"jovyan:x:{INNER_UID}:{INNER_GID}:{plan.user}:{HOME}:/bin/bash\n"
                      "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
            "group": f"users:x:{INNER_GID}:\nnogroup:x:65534:\n"}


def sandbox_argv(settings: Settings, plan: SessionPlan, *, devices=(), groups=(),
                 bwrap: str = "bwrap", setpriv: str = "setpriv", extra_ro_paths=(),
                 gate_fds: tuple[int, int] | None = None) -> list[str]:
    """The command prefix that renders ``plan`` as a sandbox: ``ip netns exec <island> setpriv
    <uid/gid, no capabilities> bwrap <filesystem and namespaces> --``; append the program to run.

    Every mount comes from the plan (its runtime files prepared by ``host.prepare_host``);
    ``devices`` are the granted GPU indices. Shared by sessions, batch workers and schedulers, so
    all see exactly the same world. ``gate_fds`` (info, block): bwrap writes its child's pid to
    the first and holds the sandbox, mounts made, until the second is written to (``launch``).
    """
    env_dir = str(settings.session_env)
    bw = [bwrap,
          "--unshare-user", "--uid", str(INNER_UID), "--gid", str(INNER_GID),
          "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
          "--hostname", plan.project, "--new-session", "--cap-drop", "ALL",
          # no user namespaces inside: a process root in one of its own could over-mount what the
          # hub observes and would widen what a kernel can do to the session's server
          "--disable-userns",
          "--ro-bind", "/usr", "/usr",
          "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
          "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
          "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run",
          "--dir", "/etc"]
    if os.path.exists("/usr/bin/node"):
        # JupyterLab runs node at every start to ask yarn about builds a session cannot make
        bw += ["--ro-bind", "/dev/null", "/usr/bin/node"]
    for name in ETC_FILES:
        if os.path.exists(f"/etc/{name}"):
            bw += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    bw += ["--ro-bind", env_dir, env_dir]
    for path in extra_ro_paths:
        bw += ["--ro-bind", path, path]
    for node in device_nodes(devices):  # only the granted GPUs exist in its /dev
        bw += ["--dev-bind", node, node]
    for m in plan.mounts:
        bw += ["--ro-bind" if m.readonly else "--bind", str(m.source), m.target]
    if gate_fds:
        bw += ["--info-fd", str(gate_fds[0]), "--block-fd", str(gate_fds[1])]
    bw += ["--chdir", HOME, "--remount-ro", "/", "--"]
    all_groups = ",".join(str(g) for g in (plan.gid, *groups))
    return (["ip", "netns", "exec", plan.network,
             setpriv, f"--reuid={plan.uid}", f"--regid={plan.gid}", f"--groups={all_groups}",
             "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"] + bw)


async def launch(settings: Settings, plan: SessionPlan, command: list[str], env: dict[str, str], *,
                 log_path: Path, limits: dict, devices=(), groups=(), umask: int = 0o002,
                 bwrap: str = "bwrap", setpriv: str = "setpriv", extra_ro_paths=(),
                 audit_session: str | None = None) -> subprocess.Popen:
    """Start ``command`` in the sandbox of ``plan``: in a fresh cgroup with ``limits`` (cpu,
    mem_mb, pids_max) and the project's island, its output appended to ``log_path``. The one
    launcher of sessions, batch workers and schedulers.

    A plan with datasets passes the gate first: bwrap holds the sandbox once its mounts exist,
    hostview marks them (its records name the run ``audit_session``, default the plan's
    session id), then the sandbox runs. If hostview cannot mark, nothing of the run is left and
    ``gate``'s HostviewError says why."""
    cgroup = SessionCgroup(plan.session_id, settings.instance)
    await asyncio.to_thread(cgroup.kill_all, 0)  # a leftover of a crashed run never lingers
    cgroup.create(**limits)
    gated = bool(gate.dataset_mounts(plan))
    info_r, info_w = os.pipe() if gated else (-1, -1)
    block_r, block_w = os.pipe() if gated else (-1, -1)
    try:
        async with netns.lock(plan.network):
            try:
                await netns.ensure(plan.network)
            except Exception:  # the lock is per process: the hub and the job engine may race to create it
                if not netns.exists(plan.network):
                    raise
            argv = sandbox_argv(settings, plan, devices=devices, groups=groups, bwrap=bwrap, setpriv=setpriv,
                                extra_ro_paths=extra_ro_paths,
                                gate_fds=(info_w, block_r) if gated else None) + command

            def child_setup():
                cgroup.join()
                os.umask(umask)

            with open(log_path, "ab") as log_file:
                # ip netns exec and setpriv exec what follows them, so the gate's fds reach bwrap
                proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                                        stderr=subprocess.STDOUT, preexec_fn=child_setup, start_new_session=True,
                                        close_fds=True, pass_fds=(info_w, block_r) if gated else (), cwd="/")
        if gated:
            os.close(info_w)
            os.close(block_r)
            info_w = block_r = -1
            try:
                child = await asyncio.to_thread(_child_pid, info_r, proc)
                await gate.mark_run(settings, plan, child, audit_session or plan.session_id)
            except BaseException:
                # killed while held: closing the block fd must never release it unmarked
                await asyncio.to_thread(cgroup.kill_all, 0)
                proc.wait()
                cgroup.remove()
                raise
            os.write(block_w, b"1")
        return proc
    finally:
        for fd in (info_r, info_w, block_r, block_w):
            if fd >= 0:
                os.close(fd)


def _child_pid(info_fd: int, proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """The sandbox's first process (host pid namespace), from bwrap's ``--info-fd`` JSON."""
    raw = b""
    while b"}" not in raw:
        ready, _, _ = select.select([info_fd], [], [], timeout)
        chunk = os.read(info_fd, 4096) if ready else b""
        if not chunk:
            raise HostviewError(
                f"the sandbox did not start (bwrap exited with {proc.poll()}); its log says why")
        raw += chunk
    return int(json.loads(raw.decode())["child-pid"])
