"""The embedded default backend: each session is a bubblewrap sandbox in its project's island.

Rendering of a SessionPlan:

- filesystem: a fresh root with only /usr, a few files of /etc, the session environment, the
  plan's mounts (datasets read-only, home and workspace read-write), a private /tmp; the root
  itself is read-only;
- identity: an unprivileged host uid (per account) and the project's gid; inside, user, pid, ipc,
  uts and cgroup namespaces, no capabilities, no_new_privs (bubblewrap always sets it);
- network: ``ip netns exec <island>`` puts the sandbox in the project's loopback-only namespace;
  the single-user server listens on a unix socket that the proxy routes to, and it reaches the
  hub API through the hub's socket directory, bound in read-only;
- limits: a per-session cgroup carries the profile's memory, CPU and pids limits; the kernel
  OOM-kills the biggest process in it (a kernel), never the host or the hub.

A session outlives the hub: the cgroup finds its processes after a restart, and ``poll()`` re-checks
membership and permit expiry, stopping sessions that lost their right to run.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
from pathlib import Path

from jupyterhub.spawner import Spawner
from traitlets import Unicode

from ..gpus import device_nodes
from ..plan import HOME, SessionPlan
from ..settings import Settings
from . import netns
from .cgroups import SessionCgroup
from .plan_spawner import PlanSpawner, server_args, server_command

INNER_UID, INNER_GID = 1000, 100
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf", "hosts",
             "ssl", "ca-certificates", "alternatives", "mime.types", "fonts", "protocols", "services")


def identity_files(plan: SessionPlan) -> dict[str, str]:
    """/etc/passwd and /etc/group inside a sandbox: the user namespace maps the plan's uid to jovyan."""
    return {"passwd": f"jovyan:x:{INNER_UID}:{INNER_GID}:{plan.user}:{HOME}:/bin/bash\n"
                      "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
            "group": f"users:x:{INNER_GID}:\nnogroup:x:65534:\n"}


def sandbox_argv(settings: Settings, plan: SessionPlan, *, devices=(), groups=(),
                 bwrap: str = "bwrap", setpriv: str = "setpriv", extra_ro_paths=()) -> list[str]:
    """The command prefix that renders ``plan`` as a sandbox: ``ip netns exec <island> setpriv
    <uid/gid, no capabilities> bwrap <filesystem and namespaces> --``; append the program to run.

    Every mount comes from the plan (its runtime files prepared by ``host.prepare_host``);
    ``devices`` are the granted GPU indices. Shared by sessions, batch workers and schedulers, so
    all see exactly the same world.
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
    bw += ["--chdir", HOME, "--remount-ro", "/", "--"]
    all_groups = ",".join(str(g) for g in (plan.gid, *groups))
    return (["ip", "netns", "exec", plan.network,
             setpriv, f"--reuid={plan.uid}", f"--regid={plan.gid}", f"--groups={all_groups}",
             "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"] + bw)


async def launch(settings: Settings, plan: SessionPlan, command: list[str], env: dict[str, str], *,
                 log_path: Path, limits: dict, devices=(), groups=(), umask: int = 0o002,
                 bwrap: str = "bwrap", setpriv: str = "setpriv", extra_ro_paths=()) -> subprocess.Popen:
    """Start ``command`` in the sandbox of ``plan``: in a fresh cgroup with ``limits`` (cpu,
    mem_mb, pids_max) and the project's island, its output appended to ``log_path``. The one
    launcher of sessions, batch workers and schedulers."""
    cgroup = SessionCgroup(plan.session_id, settings.instance)
    await asyncio.to_thread(cgroup.kill_all, 0)  # a leftover of a crashed run never lingers
    cgroup.create(**limits)
    async with netns.lock(plan.network):
        try:
            await netns.ensure(plan.network)
        except Exception:  # the lock is per process: the hub and the job engine may race to create it
            if not netns.exists(plan.network):
                raise
        argv = sandbox_argv(settings, plan, devices=devices, groups=groups, bwrap=bwrap, setpriv=setpriv,
                            extra_ro_paths=extra_ro_paths) + command

        def child_setup():
            cgroup.join()
            os.umask(umask)

        with open(log_path, "ab") as log_file:
            return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                                    stderr=subprocess.STDOUT, preexec_fn=child_setup, start_new_session=True,
                                    close_fds=True, cwd="/")


class SandboxSpawner(PlanSpawner, Spawner):
    """Runs each (user, project) session in a bubblewrap sandbox on this host."""

    bwrap_path = Unicode("bwrap", config=True, help="The bubblewrap executable.")
    setpriv_path = Unicode("setpriv", config=True, help="util-linux setpriv, used to drop to the session uid.")

    start_noun = "sandbox"
    pid = 0                       # state kept across hub restarts (with the base's)
    _proc: subprocess.Popen | None = None

    def _backend_state(self) -> dict:
        return {"pid": self.pid}

    def _load_backend_state(self, state: dict) -> None:
        self.pid = state.get("pid", 0)

    def _launched(self) -> bool:
        return bool(self.pid)

    def _identity_files(self, plan: SessionPlan) -> dict[str, str]:
        return identity_files(plan)

    def _cgroup(self) -> SessionCgroup:
        return SessionCgroup(self.session_id, self.settings.instance)

    # -- start ----------------------------------------------------------------------------
    async def _launch(self, plan: SessionPlan) -> None:
        self._progress(30, "Joining the project's network island (loopback only)")
        self._progress(50, f"Starting the sandbox ({plan.cpu:g} CPU, {plan.mem_mb} MiB)")
        self.log.info("Starting sandbox %s: %s", plan.session_id, shlex.join(self._command(plan)))
        self._proc = await launch(
            self.settings, plan, self._server_command(plan), self._environment(plan),
            log_path=plan.run_dir / "server.log",
            limits=dict(cpu=plan.cpu, mem_mb=plan.mem_mb, pids_max=self.pids_limit),
            umask=self.session_umask, **self._sandbox_options())
        self.pid = self._proc.pid

    def _sandbox_options(self) -> dict:
        return dict(devices=self.gpu_devices, groups=(self.settings.sessions_gid,), bwrap=self.bwrap_path,
                    setpriv=self.setpriv_path, extra_ro_paths=self.extra_ro_paths)

    def _server_command(self, plan: SessionPlan) -> list[str]:
        return [*server_command(str(self.settings.session_env / "bin" / "python")), *server_args(plan, self.args)]

    def _command(self, plan: SessionPlan) -> list[str]:
        """What runs: ip netns exec <island> setpriv <uid> bwrap <plan> -- python -m vre_session.serve ..."""
        return sandbox_argv(self.settings, plan, **self._sandbox_options()) + self._server_command(plan)

    def _environment(self, plan: SessionPlan) -> dict[str, str]:
        env = super()._environment(plan)
        env["PATH"] = f"{self.settings.session_env}/bin:/usr/local/bin:/usr/bin:/bin"
        return env

    async def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join((self._run_dir() / "server.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- liveness and removal -------------------------------------------------------------
    async def _is_running(self) -> bool:
        if self._proc is not None:
            if self._proc.poll() is None:
                return True
            self._exit_code = self._proc.returncode
            return False
        # after a hub restart: the session's cgroup finds its processes
        return bool(self.pid and self.session_id and self._cgroup().pids())

    async def _remove(self, grace: float) -> None:
        await asyncio.to_thread(self._kill, grace)

    def _kill(self, grace: float) -> None:
        """Kill the session's processes, reap, remove its cgroup."""
        cgroup = self._cgroup()
        cgroup.kill_all(grace)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None
        elif self.pid:
            try:  # reap a child of a previous hub incarnation that is ours no longer: ignore
                os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pass
        cgroup.remove()
        self.pid = 0

    async def _release_island(self) -> None:
        if self.island:
            async with netns.lock(self.island):
                await netns.delete_if_unused(self.island)
