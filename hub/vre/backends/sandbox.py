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
import json
import os
import secrets
import shlex
import shutil
import subprocess
from pathlib import Path

from jupyterhub.spawner import Spawner
from traitlets import Float, Integer, List, Unicode

from ..audit.relay import replay_spool
from ..gpus import device_nodes, gpu_env
from ..plan import HOME, SessionPlan
from ..settings import Settings
from . import netns
from .cgroups import SessionCgroup
from ..plan import INNER_RUN
from .plan_spawner import PlanSessionMixin, relay_env, server_args, user_options_profile

INNER_UID, INNER_GID = 1000, 100
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf", "hosts",
             "ssl", "ca-certificates", "alternatives", "mime.types", "fonts", "protocols", "services")


def write_identity_files(run: Path, plan: SessionPlan) -> None:
    """The passwd, group and manifest files a sandbox sees as /etc/passwd, /etc/group and
    /etc/vre/session.json."""
    run.mkdir(parents=True, exist_ok=True)
    os.chmod(run, 0o755)
    (run / "session.json").write_text(json.dumps(plan.manifest(), indent=2))
    (run / "passwd").write_text(f"jovyan:x:{INNER_UID}:{INNER_GID}:{plan.user}:{HOME}:/bin/bash\n"
                                "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    (run / "group").write_text(f"users:x:{INNER_GID}:\nnogroup:x:65534:\n")


def sandbox_argv(settings: Settings, plan: SessionPlan, run: Path, *, binds=(), devices=(), groups=(),
                 bwrap: str = "bwrap", setpriv: str = "setpriv", extra_ro_paths=()) -> list[str]:
    """The command prefix that renders ``plan`` as a sandbox: ``ip netns exec <island> setpriv
    <uid/gid, no capabilities> bwrap <filesystem and namespaces> --``; append the program to run.

    ``run`` holds the files of ``write_identity_files``; ``binds`` are extra (source, target,
    read-only) binds of the caller (sockets, spools); ``devices`` are granted GPU indices.
    Shared by sessions and batch workers, so both see exactly the same world.
    """
    env_dir = str(settings.session_env)
    bw = [bwrap,
          "--unshare-user", "--uid", str(INNER_UID), "--gid", str(INNER_GID),
          "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
          "--hostname", plan.project, "--new-session", "--cap-drop", "ALL",
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
    bw += ["--ro-bind", str(run / "passwd"), "/etc/passwd",
           "--ro-bind", str(run / "group"), "/etc/group",
           "--ro-bind", str(run / "session.json"), "/etc/vre/session.json",
           "--ro-bind", env_dir, env_dir]
    for path in extra_ro_paths:
        bw += ["--ro-bind", path, path]
    for node in device_nodes(devices):  # only the granted GPUs exist in its /dev
        bw += ["--dev-bind", node, node]
    for m in plan.mounts:
        bw += ["--ro-bind" if m.readonly else "--bind", str(m.source), m.target]
    for source, target, readonly in binds:
        bw += ["--ro-bind" if readonly else "--bind", str(source), target]
    bw += ["--chdir", HOME, "--remount-ro", "/", "--"]
    all_groups = ",".join(str(g) for g in (plan.gid, *groups))
    return (["ip", "netns", "exec", plan.network,
             setpriv, f"--reuid={plan.uid}", f"--regid={plan.gid}", f"--groups={all_groups}",
             "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"] + bw)


class SandboxSpawner(PlanSessionMixin, Spawner):
    """Runs each (user, project) session in a bubblewrap sandbox on this host."""

    bwrap_path = Unicode("bwrap", config=True, help="The bubblewrap executable.")
    setpriv_path = Unicode("setpriv", config=True, help="util-linux setpriv, used to drop to the session uid.")
    pids_limit = Integer(2048, config=True, help="Most processes (and threads) one session may have.")
    stop_grace = Float(5.0, config=True, help="Seconds between SIGTERM and SIGKILL when stopping a session.")
    extra_ro_paths = List(
        Unicode(), config=True,
        help="Host paths to show read-only inside every sandbox at the same path (shared software).",
    )
    session_umask = Integer(0o002, config=True, help="umask in sessions: group-writable files for the shared workspace.")

    pid = Integer(0)              # state kept across hub restarts, with the mixin's
    start_noun = "sandbox"
    _proc: subprocess.Popen | None = None

    def get_state(self):
        state = super().get_state()
        if self.pid:
            state.update(pid=self.pid, **self._plan_state())
        return state

    def load_state(self, state):
        super().load_state(state)
        self.pid = state.get("pid", 0)
        self._load_plan_state(state)

    def clear_state(self):
        super().clear_state()
        self.pid = 0
        self._clear_plan_state()

    # -- start ----------------------------------------------------------------------------
    async def start(self):
        plan = self.plan or self._build_plan(user_options_profile(self.user_options))
        self.session_id, self.island = plan.session_id, plan.network
        self.audit_session = f"{plan.session_id}-{secrets.token_hex(4)}"
        self._stop_reason = "stopped"

        async def start_and_clean_up_on_failure():
            try:
                return await self._start(plan)
            except Exception:
                await asyncio.to_thread(self._cleanup)
                raise
        return await self._audit_start(plan, start_and_clean_up_on_failure)

    async def _start(self, plan: SessionPlan) -> str:
        self._progress(10, f"Preparing project {plan.project}: {len(plan.datasets)} dataset(s) read-only")
        if plan.gpus:
            self.gpu_devices = list(await asyncio.to_thread(self._lease_gpus, plan))
            self._progress(20, f"GPU(s) {', '.join(map(str, self.gpu_devices))} reserved for this session")
        await asyncio.to_thread(self._prepare_host, plan)
        cgroup = SessionCgroup(plan.session_id, self.settings.instance)
        await asyncio.to_thread(cgroup.kill_all, 0)  # a leftover of a crashed run never lingers
        cgroup.create(cpu=plan.cpu, mem_mb=plan.mem_mb, pids_max=self.pids_limit)

        self._progress(30, "Joining the project's network island (loopback only)")
        async with netns.lock(plan.network):
            await netns.ensure(plan.network)
            argv = self._command(plan)
            env = self._environment(plan)
            log_file = open(self._run_dir() / "server.log", "ab")
            self.log.info("Starting sandbox %s: %s", plan.session_id, shlex.join(argv))
            self._progress(50, f"Starting the sandbox ({plan.cpu:g} CPU, {plan.mem_mb} MiB)")
            umask = self.session_umask

            def child_setup():
                cgroup.join()
                os.umask(umask)

            try:
                self._proc = subprocess.Popen(
                    argv, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                    preexec_fn=child_setup, start_new_session=True, close_fds=True, cwd="/",
                )
            finally:
                log_file.close()
        self.pid = self._proc.pid

        self._progress(70, "Waiting for JupyterLab to listen")
        await self._wait_for_socket(self._proc)
        self._progress(90, "Server is up; connecting")
        return self._socket_url()

    async def _wait_for_socket(self, proc: subprocess.Popen) -> None:
        sock = self._socket_path()
        deadline = asyncio.get_running_loop().time() + self.start_timeout
        while not sock.exists():
            if proc.poll() is not None:
                tail = self._log_tail()
                self.log.error("Sandbox %s exited with %s:\n%s", self.session_id, proc.returncode, tail)
                await asyncio.to_thread(self._cleanup)
                raise RuntimeError(f"the session's server exited during start (code {proc.returncode}); "
                                   "an admin can read its log in the hub's log")
            if asyncio.get_running_loop().time() > deadline:
                await asyncio.to_thread(self._cleanup)
                raise TimeoutError(f"the session's server did not start within {self.start_timeout} s")
            await asyncio.sleep(0.05)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join((self._run_dir() / "server.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _prepare_host(self, plan: SessionPlan) -> None:
        write_identity_files(self._prepare_run_dir(plan), plan)

    def _command(self, plan: SessionPlan) -> list[str]:
        """ip netns exec <island> setpriv <uid> bwrap <plan> -- jupyterhub-singleuser ..."""
        run = self._run_dir()
        # The directory, not the socket: a restarted hub recreates the socket file.
        binds = [(self.settings.hub_socket_dir, f"{INNER_RUN}/hub", True),
                 (run / "sock", f"{INNER_RUN}/session", False),
                 (run / "spool", f"{INNER_RUN}/spool", False)]
        singleuser = str(self.settings.session_env / "bin" / "jupyterhub-singleuser")
        return (sandbox_argv(self.settings, plan, run, binds=binds, devices=self.gpu_devices,
                             groups=(self.settings.sessions_gid,), bwrap=self.bwrap_path,
                             setpriv=self.setpriv_path, extra_ro_paths=self.extra_ro_paths)
                + [singleuser, *server_args(plan, self.args)])

    def _environment(self, plan: SessionPlan) -> dict[str, str]:
        env = self.get_env()  # JUPYTERHUB_* (token, API URL, service prefix, ...)
        env.update(plan.env)
        if plan.gpus:
            env.update(gpu_env(self.gpu_devices))
        env.update({
            "PATH": f"{self.settings.session_env}/bin:/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "SHELL": "/bin/bash",
            "JUPYTER_RUNTIME_DIR": "/tmp/jupyter-runtime",
            **relay_env(self.settings, self._identity(plan.user, plan.project)),
        })
        return env

    # -- poll and stop --------------------------------------------------------------------
    def _alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        if not self.pid or not self.session_id:
            return False
        return bool(SessionCgroup(self.session_id, self.settings.instance).pids())

    async def poll(self):
        if not self._alive():
            if self.pid:  # not yet finished: it died on its own
                code = self._proc.returncode if self._proc is not None else None
                await self._finish(outcome="error", reason=f"the session ended by itself (exit code {code})")
            return 0
        return await self._stop_if_refused()

    async def stop(self, now=False):
        if not self.pid:  # never started, or already finished by poll()
            return
        await self._finish(grace=0 if now else self.stop_grace, reason=getattr(self, "_stop_reason", "stopped"))

    async def _finish(self, *, reason: str, outcome: str = "ok", grace: float = 0) -> None:
        """Stop what is left, store the session's spooled audit events, record the stop, clean up."""
        identity = self._identity(self.user.name, self.name)
        await asyncio.to_thread(self._cleanup, grace, identity)
        await self._release_island()
        await self._audit_stop(identity, reason=reason, outcome=outcome)
        self.audit_session = ""

    def _cleanup(self, grace: float = 0, identity=None) -> None:
        """Kill the session's processes, reap, keep its audit spool, remove its cgroup and run
        directory. Idempotent."""
        cgroup = SessionCgroup(self.session_id, self.settings.instance)
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
        if self.gpu_devices:
            self._release_gpus()
        if identity is not None and identity.session:
            replay_spool(self.settings, identity, self._run_dir() / "spool", self.log)
        shutil.rmtree(self._run_dir(), ignore_errors=True)
        self.pid = 0

    async def _release_island(self) -> None:
        if self.island:
            async with netns.lock(self.island):
                await netns.delete_if_unused(self.island)
