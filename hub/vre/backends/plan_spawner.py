"""The spawner lifecycle every VRE backend shares: the plan from the database, the form, progress
events, GPU leases, the audit of starts and stops, the relay credential, the single-user
server's command line, and the re-checks of the plan while a session runs.

A backend combines :class:`PlanSpawner` with a JupyterHub spawner class and implements only how a
plan becomes a running server and how it ends:

- ``_launch(plan)``: start the server (its socket appears at ``_socket_path()``);
- ``_is_running()``: True, False (then ``_exit_code`` says how it ended) or None (cannot tell now);
- ``_remove(grace)``: stop and remove what runs (idempotent), forgetting the run's handle;
- ``_launched()``: whether there is a run to stop; ``_log_tail()``; optionally ``_release_island()``,
  ``_check_running()`` (repairs on each poll) and ``_backend_state()`` / ``_load_backend_state()``.

Everything a user can influence goes through ``_apply_plan``: the request only selects a profile;
the plan comes from the database.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
from pathlib import Path
from urllib.parse import quote

from jupyterhub.spawner import Spawner
from tornado import web
from traitlets import Dict, Float, HasTraits, Instance, Integer, List, Unicode, default

from .. import db as vdb
from .. import gpus
from ..access.resolve import MountMap, access_file
from ..audit.events import aemit
from ..audit.relay import Identity, make_token, replay_spool
from ..hostview import client as hostview
from ..plan import HOME, INNER_SOCKET, PlanCache, PlanRefused, SessionPlan, build_plan
from ..settings import Settings, load
from .host import prepare_host

#: The plans the polls of running sessions re-check, shared by all spawners of the hub process.
POLL_PLANS = PlanCache()


def user_options_profile(user_options: dict | None) -> str | None:
    """The profile the user chose; the form sends lists of strings, the API may send anything."""
    value = (user_options or {}).get("profile")
    if isinstance(value, list):
        value = value[0] if value else None
    if value is not None and not isinstance(value, str):
        raise web.HTTPError(400, "profile must be a string naming one of the project's profiles")
    return value or None


def server_command(python: str) -> list[str]:
    """The session's server: JupyterHub's single-user server, started by ``vre_session.serve``,
    which first makes the process non-dumpable (no kernel of the same uid can trace it or read
    its memory and environment)."""
    return [python, "-m", "vre_session.serve"]


def server_args(plan: SessionPlan, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The single-user server's arguments for a session (after ``server_command``)."""
    argv = [f"--sock={INNER_SOCKET}",
            "--KernelManager.transport=ipc", f"--ServerApp.root_dir={HOME}",
            # vre_session holds the download guard and audit relay: no session without it.
            # jupyter_lsp (no language servers here) and notebook_shim (no classic extensions)
            # only cost start time.
            '--ServerApp.jpserver_extensions={"vre_session": True, "jupyter_lsp": False, "notebook_shim": False}',
            "--ServerApp.reraise_server_extension_failures=True",
            # nothing a session could install, and nothing to fetch: there is no network
            "--LabApp.extension_manager=readonly", "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    return argv + list(extra)


def socket_listens(path: Path) -> bool:
    """Whether the server's unix socket accepts connections. Its existence is not enough: the
    server binds, then chmods, then listens, and a socket taken over (``_lock_socket``) between
    bind and chmod makes the server's chmod fail, so it never listens and the hub waits in vain."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.setblocking(False)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        except BlockingIOError:  # its backlog is full: it listens
            return True
        return True

class PlanSpawner(HasTraits):
    """Spawner lifecycle shared by the VRE's backends (put it before the JupyterHub spawner class)."""

    settings = Instance(Settings, config=True, help="VRE settings (default: loaded from the environment).")
    pids_limit = Integer(2048, config=True, help="Most processes (and threads) one session may have.")
    stop_grace = Float(5.0, config=True, help="Seconds between SIGTERM and SIGKILL when stopping a session.")
    session_umask = Integer(0o002, config=True,
                            help="umask in sessions: group-writable files for the shared workspace.")
    extra_ro_paths = List(
        Unicode(), config=True,
        help="Host paths to show read-only inside every session at the same path (shared software, development).",
    )

    @default("settings")
    def _settings_default(self):
        return load()

    # state kept across hub restarts
    session_id = Unicode("")       # stable per (user, project): names containers, cgroups and sockets
    island = Unicode("")           # the project's network
    audit_session = Unicode("")    # unique per run: what audit events call "session"
    gpu_devices = List(Integer())  # GPUs leased to this session (vre.gpus)
    access = Dict()                # what the access layer enforces for this run (access_policy)

    plan: SessionPlan | None = None
    _exit_code: int | None = None
    #: what progress() reports as "starting the server" (the sandbox, the container)
    start_noun = "server"

    # -- what a backend implements ----------------------------------------------------------
    async def _launch(self, plan: SessionPlan) -> None:
        raise NotImplementedError

    async def _is_running(self) -> bool | None:
        raise NotImplementedError

    async def _remove(self, grace: float) -> None:
        raise NotImplementedError

    def _launched(self) -> bool:
        raise NotImplementedError

    async def _log_tail(self, lines: int = 30) -> str:
        return ""

    async def _release_island(self) -> None:
        """Release the project's network when this was its last user (backends that own one)."""

    async def _check_running(self) -> None:
        """Repairs a backend makes on each poll of a running session."""

    def _backend_state(self) -> dict:
        return {}

    def _load_backend_state(self, state: dict) -> None:
        pass

    def _identity_files(self, plan: SessionPlan) -> dict[str, str]:
        """passwd and group as the session sees them."""
        raise NotImplementedError

    def _gpu_capacity(self) -> int | None:
        """GPUs a session could get at most (None: the backend's scheduler decides)."""
        return len(gpus.host_devices(self.settings))

    def _start_details(self, plan: SessionPlan) -> dict:
        """What the backend adds to the ``session.start`` record (where the run landed)."""
        return {}

    # -- JupyterHub hooks -------------------------------------------------------------------
    @default("ip")
    def _ip_default(self):
        # Never bound (the server listens on a unix socket); jupyter_server's default port
        # keeps it from refusing --sock with "--port and --sock are mutually exclusive".
        return "127.0.0.1"

    @default("port")
    def _port_default(self):
        return 8888

    @default("apply_user_options")
    def _apply_default(self):
        return PlanSpawner._apply_plan

    @default("options_form")
    def _default_options_form(self):
        return PlanSpawner._render_form

    @default("options_from_form")
    def _default_options_from_form(self):
        return Spawner._simple_options_from_form  # (a default is not validated: give the function)

    @staticmethod
    async def _apply_plan(spawner, user_options: dict) -> None:
        """Build the plan from the database; the request only selects a profile within it."""
        profile = user_options_profile(user_options)
        audit = dict(actor=spawner.user.name, project=spawner.name or None,
                     target=f"{spawner.user.name}/{spawner.name}", details={"profile": profile})
        try:
            plan = await asyncio.to_thread(spawner._build_plan, profile)
            have = spawner._gpu_capacity()
            if have is not None and plan.gpus > have:
                raise web.HTTPError(503, f"profile {plan.profile!r} asks for {plan.gpus} GPU(s) but this host "
                                         f"has {have}; choose another profile or ask an admin")
        except PlanRefused as e:
            await aemit(spawner.settings, "session.request", outcome="denied",
                        **{**audit, "details": {**audit["details"], "reason": str(e)}})
            raise web.HTTPError(403, str(e)) from None
        except web.HTTPError as e:
            await aemit(spawner.settings, "session.request", outcome="error",
                        **{**audit, "details": {**audit["details"], "reason": e.log_message}})
            raise
        await aemit(spawner.settings, "session.request", **audit)
        spawner.plan = plan
        spawner._events, spawner._event_added = [], asyncio.Event()
        spawner._progress(5, f"Permit checked: project {plan.project}, profile {plan.profile}")

    def _build_plan(self, profile: str | None) -> SessionPlan:
        with vdb.session_scope(self.settings.vre_db_url) as session:
            return build_plan(session, self.settings, self.user.name, self.name, profile)

    @staticmethod
    def _render_form(spawner) -> str:
        from ..hubpages import spawn_form

        return spawn_form(spawner.settings, spawner.user.name, spawner.name, spawner.hub.base_url)

    @property
    def server(self):
        server = Spawner.server.fget(self)
        # JupyterHub rebuilds a socket URL as "<host>:80"; keep the real socket as connect_url,
        # also for Server objects re-created from the database after a hub restart.
        if server is not None and server.proto == "http+unix" and not server.connect_url and self.session_id:
            server.connect_url = self._socket_url()
        return server

    @server.setter
    def server(self, server):
        Spawner.server.fset(self, server)

    # -- state ------------------------------------------------------------------------------
    def get_state(self):
        state = super().get_state()
        if self._launched():
            state.update(session_id=self.session_id, island=self.island, audit_session=self.audit_session,
                         gpu_devices=list(self.gpu_devices), access=self.access, **self._backend_state())
        return state

    def load_state(self, state):
        super().load_state(state)
        self.session_id = state.get("session_id", "")
        self.island = state.get("island", "")
        self.audit_session = state.get("audit_session", "")
        self.gpu_devices = state.get("gpu_devices", [])
        self.access = state.get("access") or {}
        self._load_backend_state(state)

    def clear_state(self):
        super().clear_state()
        self.session_id, self.island, self.audit_session = "", "", ""
        self.gpu_devices = []
        self.access = {}
        self._load_backend_state({})

    # -- the access layer ------------------------------------------------------------------
    def access_policy(self) -> dict:
        """What the access layer enforces for this session (``vre.access``): fixed at start, as the
        plan is, and kept in the spawner's state so a restarted hub routes it the same way."""
        if not self.access:
            raise RuntimeError(f"session {self.session_id or self.name!r} has no access policy (started before "
                               "the access layer?); stop and start it again")
        return dict(self.access)

    def _write_access(self, plan: SessionPlan) -> None:
        """The session's policy, and its mount table for the layer's broker (root-only, outside
        the session), which resolves file paths the way the session would."""
        path = access_file(self.settings, plan.session_id)
        path.write_text(MountMap.from_plan(HOME, plan.mounts).dump(user=plan.user, project=plan.project))
        os.chmod(path, 0o600)
        self.access = {"session": plan.session_id, "audit_session": self.audit_session, "user": plan.user,
                       "project": plan.project, "downloads": plan.downloads, "audit_cells": plan.audit_cells,
                       "egress_cap": plan.egress_cap}

    # -- paths ----------------------------------------------------------------------------
    def _run_dir(self) -> Path:
        return self.settings.sessions_run_dir / self.session_id

    def _socket_path(self) -> Path:
        return self._run_dir() / "sock" / "jupyter.sock"

    def _socket_url(self) -> str:
        return "http+unix://" + quote(str(self._socket_path()), safe="")

    # -- start ----------------------------------------------------------------------------
    async def start(self):
        # our own deadline, just inside JupyterHub's start_timeout: its timeout would end the start
        # with an empty "Spawn failed: " (a bare TimeoutError), ours says what did not happen
        self._deadline = asyncio.get_running_loop().time() + max(self.start_timeout - 2, 1)
        plan = self.plan or await asyncio.to_thread(self._build_plan, user_options_profile(self.user_options))
        self.session_id, self.island = plan.session_id, plan.network
        self.audit_session = f"{plan.session_id}-{secrets.token_hex(4)}"
        self._stop_reason = "stopped"
        audit = dict(actor=plan.user, project=plan.project, session=self.audit_session, target=plan.session_id)
        try:
            await self._start(plan)
        except BaseException as e:  # also a cancelled start: nothing of it may linger
            await self._teardown(0)
            await aemit(self.settings, "session.fail", outcome="error", details={"error": str(e)}, **audit)
            raise
        await aemit(self.settings, "session.start", details={
            "datasets": list(plan.datasets), "profile": plan.profile, "cpu": plan.cpu, "mem_mb": plan.mem_mb,
            "gpus": plan.gpus, "network": plan.network, "gpu_devices": list(self.gpu_devices),
            **self._start_details(plan)}, **audit)
        return self._socket_url()

    async def _start(self, plan: SessionPlan) -> None:
        self._progress(10, f"Preparing project {plan.project}: {len(plan.datasets)} dataset(s) read-only")
        if plan.gpus:
            self.gpu_devices = list(await asyncio.to_thread(self._lease_gpus, plan))
            self._progress(20, f"GPU(s) {', '.join(map(str, self.gpu_devices))} reserved for this session")
        await asyncio.to_thread(self._prepare_host, plan)
        await asyncio.to_thread(self._write_access, plan)
        await self._launch(plan)
        self._progress(70, "Waiting for JupyterLab to listen")
        await self._wait_for_socket()
        await asyncio.to_thread(self._lock_socket)
        self._progress(90, "Server is up; connecting")

    def _prepare_host(self, plan: SessionPlan) -> None:
        """Home, workspace, the run directory with the plan's runtime files, and the hub's socket
        directory that session uids (and only they) may reach."""
        hub_dir = self.settings.hub_socket_dir
        hub_dir.mkdir(parents=True, exist_ok=True)
        os.chown(hub_dir, 0, self.settings.sessions_gid)
        os.chmod(hub_dir, 0o750)
        prepare_host(plan, self._identity_files(plan))

    def _environment(self, plan: SessionPlan) -> dict[str, str]:
        """The server's environment: JupyterHub's (API token, URLs), the plan's, the run's relay
        credential and GPUs."""
        env = self.get_env()
        env.update(plan.env)
        env["VRE_AUDIT_TOKEN"] = make_token(self.settings, self._identity(plan.user, plan.project))
        if self.gpu_devices:
            env.update(gpus.gpu_env(self.gpu_devices))
        return env

    async def _wait_for_socket(self) -> None:
        sock = self._socket_path()
        loop = asyncio.get_running_loop()
        deadline = self._deadline
        next_check = loop.time()
        while not socket_listens(sock):
            now = loop.time()
            if now >= next_check:
                next_check = now + 0.25
                if await self._is_running() is False:
                    self.log.error("%s %s exited with %s:\n%s", self.start_noun.capitalize(), self.session_id,
                                   self._exit_code, await self._log_tail())
                    raise RuntimeError(f"the session's server exited during start (code {self._exit_code}); "
                                       "an admin can read its log in the hub's log")
            if now > deadline:
                self.log.error("%s %s did not listen in time; its log:\n%s", self.start_noun.capitalize(),
                               self.session_id, await self._log_tail())
                raise TimeoutError(f"the session's server did not listen within {self.start_timeout} s "
                                   "(Spawner.start_timeout); an admin can read its log in the hub's log")
            await asyncio.sleep(0.05)

    def _lock_socket(self) -> None:
        """Take the server's socket out of the session's reach as soon as it exists: the hub
        owns it and its directory from now on, so nothing in the session can move it aside,
        replace it with a listener of its own, or connect to it. The server keeps accepting on
        the socket it bound; the proxy and the hub (root) connect. No researcher code can have
        run yet: the session's route is added only after ``start()`` returns. Called once the
        socket listens, so the server has set it up completely (``socket_listens``)."""
        sock = self._socket_path()
        os.chown(sock, self.settings.access_uid, self.settings.access_uid)  # the access layer's alone
        os.chmod(sock, 0o600)
        os.chown(sock.parent, 0, 0)
        os.chmod(sock.parent, 0o755)

    # -- poll and stop ----------------------------------------------------------------------
    async def poll(self):
        if not self._launched():
            return 0
        running = await self._is_running()
        if running is None:  # the backend cannot tell now (engine briefly away): leave it running
            return None
        if not running:
            await self._finish(outcome="error", reason=f"the session ended by itself (exit code {self._exit_code})")
            return 0
        await self._check_running()
        return await self._stop_if_refused()

    async def stop(self, now=False):
        if not self._launched():  # never started, or already finished by poll()
            return
        if getattr(self, "_waiting_for_response", False):  # JupyterHub gave up on a server that never answered
            self.log.error("%s %s never answered; its log before it is removed:\n%s",
                           self.start_noun.capitalize(), self.session_id, await self._log_tail(60))
        await self._finish(grace=0 if now else self.stop_grace, reason=getattr(self, "_stop_reason", "stopped"))

    async def _finish(self, *, reason: str, outcome: str = "ok", grace: float = 0) -> None:
        """Stop what is left, store the session's spooled audit events, record the stop, clean up."""
        identity = self._identity(self.user.name, self.name)
        await self._teardown(grace, identity)
        await aemit(self.settings, "session.stop", actor=identity.user, project=identity.project,
                    session=identity.session, target=self.session_id, outcome=outcome, details={"reason": reason})
        self.audit_session = ""

    async def _teardown(self, grace: float, identity: Identity | None = None) -> None:
        """Remove the run, have hostview summarise its dataset reads, release its GPUs, keep its
        audit spool, remove its run directory and release the island if unused. Idempotent."""
        try:
            await self._remove(grace)
        finally:
            if self.audit_session:
                await asyncio.to_thread(hostview.unmark, self.settings, self.audit_session)
            if self.gpu_devices:
                await asyncio.to_thread(self._release_gpus)
            if self.session_id:
                if identity is not None and identity.session:
                    await asyncio.to_thread(replay_spool, self.settings, identity, self._run_dir() / "spool", self.log)
                shutil.rmtree(self._run_dir(), ignore_errors=True)
            await self._release_island()

    async def _stop_if_refused(self):
        """Stop the session if its plan no longer holds (membership removed, permit expired);
        0 when stopped, None when it may go on."""
        reason = await asyncio.to_thread(self._refusal)
        if not reason:
            return None
        self.log.warning("Stopping %s: %s", self._log_name, reason)
        self._stop_reason = reason
        await self.stop()
        return 0

    def _refusal(self) -> str | None:
        """Why this running session may no longer run (membership removed, permit expired), or None.
        Every poll of every session asks: the answer is cached until the database or the clock
        could change it (``POLL_PLANS``), so 1,000 sessions cost a poll 1,000 reads of one row."""
        try:
            with vdb.session_scope(self.settings.vre_db_url) as db:
                POLL_PLANS.get(db, self.settings, self.user.name, self.name, user_options_profile(self.user_options))
        except PlanRefused as e:
            return str(e)
        except Exception:  # the database being briefly unavailable must not stop sessions
            self.log.exception("Could not re-check %s; leaving it running", self._log_name)
        return None

    # -- GPUs -----------------------------------------------------------------------------
    @staticmethod
    def _gpu_holder(session_id: str) -> str:
        return f"session:{session_id}"

    def _lease_gpus(self, plan: SessionPlan) -> tuple[int, ...]:
        try:
            with vdb.session_scope(self.settings.vre_db_url) as db:
                return gpus.acquire(db, self.settings, self._gpu_holder(plan.session_id), plan.gpus,
                                    shared=plan.gpu_shared)
        except gpus.NoGpuFree as e:
            raise web.HTTPError(503, f"{e}; try again later or choose a profile without GPUs") from None

    def _release_gpus(self) -> None:
        if self.gpu_devices and self.session_id:
            with vdb.session_scope(self.settings.vre_db_url) as db:
                gpus.release(db, self._gpu_holder(self.session_id))
        self.gpu_devices = []

    # -- progress -------------------------------------------------------------------------
    def _progress(self, pct: int, message: str) -> None:
        if getattr(self, "_events", None) is None:
            self._events, self._event_added = [], asyncio.Event()
        self._events.append({"progress": pct, "message": message})
        self._event_added.set()

    async def progress(self):
        sent = 0
        for _ in range(50):  # the list appears when the request is accepted (apply_user_options)
            if getattr(self, "_events", None) is not None or not self.pending:
                break
            await asyncio.sleep(0.1)
        if getattr(self, "_events", None) is None:
            return
        while True:
            while sent < len(self._events):
                yield self._events[sent]
                sent += 1
            if self._spawn_future is not None and self._spawn_future.done() and sent >= len(self._events):
                break
            self._event_added.clear()
            try:
                await asyncio.wait_for(self._event_added.wait(), timeout=1)
            except asyncio.TimeoutError:
                if self._spawn_future is None or self._spawn_future.done():
                    break

    # -- audit identity -------------------------------------------------------------------
    def _identity(self, user: str, project: str) -> Identity:
        return Identity(user, project, self.audit_session)
