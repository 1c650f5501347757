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

from jupyterhub.spawner import Spawner
from traitlets import Unicode

from ..plan import SessionPlan
from . import netns
from .bwrap import identity_files, launch, sandbox_argv
from .cgroups import SessionCgroup
from .plan_spawner import PlanSpawner, server_args, server_command


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
            umask=self.session_umask, audit_session=self.audit_session, **self._sandbox_options())
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
