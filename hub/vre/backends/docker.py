"""The docker backend: each (user, project) session is a container, through Docker or Podman's
Docker-compatible API (``settings.docker_url``).

Rendering of a SessionPlan (and nothing else; :func:`container_config` is the whole translation):

- filesystem: the notebook image's root, **read-only**, with tmpfs on /tmp, /var/tmp and /run; the
  plan's mounts (datasets and their catalogue records read-only, home and workspace read-write),
  the manifest at /etc/vre/session.json, and the same /run/vre layout as the sandbox: the hub's
  socket *directory* read-only at /run/vre/hub (a restarted hub recreates the socket), the
  session's own socket directory at /run/vre/session and its audit spool at /run/vre/spool;
- identity: the container runs as the account's host uid and the project's gid (``plan.uid:plan.gid``)
  with the sessions group added (to reach the hub socket), so files in home and workspace belong to
  the account and the project on the host, as with the sandbox; /etc/passwd and /etc/group name
  them (jovyan, the project); all capabilities dropped, no-new-privileges, an init as pid 1;
- network: one ``--internal`` network per project (``vre.plan.island_name``), created on demand and
  removed with its last container. Internal networks have no default route; the engine still puts
  a gateway address on the host's side of the bridge (Podman's DNS listens there), so the hub adds
  a firewall rule that rejects everything arriving from the project's bridge (IPv4 and IPv6) and
  IPv6 is switched off inside. A session reaches the other containers of its project and nothing
  else. The single-user server listens on a unix socket in the bound session directory: the proxy
  connects to that socket, so no container address or published port is involved;
- limits: the profile's CPU quota, memory (swap included) and a pids limit on the container's
  cgroup; the kernel OOM-kills the biggest process in it (a kernel), never the host or the hub;
- GPUs: leased from ``vre.gpus`` and given as device nodes (or Docker ``device_requests``).

A session outlives the hub: the container keeps running (the engine owns it) and the spawner
re-attaches from its stored state; ``poll()`` re-checks membership and permit expiry.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import docker
from docker.errors import APIError, NotFound
from dockerspawner import DockerSpawner
from traitlets import Bool, CaselessStrEnum, Dict, Integer, List, Unicode, default

from .. import gpus
from ..audit.relay import replay_spool
from ..plan import HOME, SessionPlan
from ..settings import Settings
from ..plan import INNER_RUN
from .plan_spawner import PlanSessionMixin, relay_env, server_args, user_options_profile

CFS_PERIOD_US = 100_000
#: sysctls of every session: no IPv6 at all (its link-local addresses would reach the host's bridge)
SYSCTLS = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
_locks: dict[str, asyncio.Lock] = {}


class DockerBackendError(RuntimeError):
    """The engine or the host refused something a session needs; the message says what to fix."""


def bridge_name(network: str) -> str:
    """The host interface of a project's network: deterministic, at most 15 characters."""
    return "vre" + hashlib.sha256(network.encode()).hexdigest()[:11]


def network_config(settings: Settings, plan: SessionPlan) -> dict:
    """Arguments of ``APIClient.create_network`` for the project's island."""
    return dict(name=plan.network, driver="bridge", internal=True, check_duplicate=True,
                options={"com.docker.network.bridge.name": bridge_name(plan.network)},
                labels={"vre.instance": settings.instance, "vre.project": plan.project, "vre.network": "island"})


def identity_files(plan: SessionPlan, sessions_gid: int) -> dict[str, str]:
    """/etc/passwd and /etc/group of a session container: jovyan is the account's host uid."""
    return {
        "passwd": (f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
                   f"jovyan:x:{plan.uid}:{plan.gid}:{plan.user}:{HOME}:/bin/bash\n"
                   "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
        "group": (f"root:x:0:\n{plan.project}:x:{plan.gid}:jovyan\nvre-sessions:x:{sessions_gid}:jovyan\n"
                  "users:x:100:\nnogroup:x:65534:\n"),
    }


def gpu_config(devices: tuple[int, ...] | list[int], nodes: list[str], mode: str = "devices") -> tuple[dict, dict]:
    """(host config, environment) giving a container the GPUs ``devices`` (host indices).

    ``devices`` mode maps the device nodes (``/dev/nvidiaN`` of the lease and the control nodes
    that exist); ``device_requests`` asks Docker's NVIDIA runtime for the same devices. Inside, the
    driver enumerates only the granted GPUs, so CUDA numbers them 0..n-1 (in host PCI order).
    """
    if not devices:
        return {}, {}
    env = {**gpus.gpu_env(devices), "NVIDIA_DRIVER_CAPABILITIES": "compute,utility"}
    if mode == "device_requests":
        request = docker.types.DeviceRequest(driver="nvidia", device_ids=[str(i) for i in devices],
                                             capabilities=[["gpu"]])
        return {"device_requests": [request]}, env
    return {"devices": [f"{node}:{node}:rwm" for node in nodes]}, env


def container_config(settings: Settings, plan: SessionPlan, *, image: str, name: str, run_dir: Path,
                     env: dict[str, str], command: list[str], gpu_devices=(), gpu_nodes=(),
                     gpu_mode: str = "devices", pids_limit: int = 2048, tmp_size: str = "2g",
                     extra_ro_paths=(), umask: int = 0o002, init: bool = True,
                     engine: str = "podman") -> tuple[dict, dict]:
    """(create_container kwargs without host_config, create_host_config kwargs) for ``plan``.

    ``init``: let the engine run an init as pid 1 (for images without an init entrypoint).
    ``engine``: ``podman`` or ``docker`` (they differ in how a tmpfs becomes the user's).
    """
    binds = []

    def bind(source, target: str, readonly: bool) -> None:
        if ":" in str(source) or ":" in target:
            raise DockerBackendError(f"cannot bind {source} at {target}: container binds cannot name paths "
                                     "with ':'; rename the directory")
        binds.append(f"{source}:{target}:{'ro' if readonly else 'rw'}")

    for m in plan.mounts:
        bind(m.source, m.target, m.readonly)
    bind(run_dir / "session.json", "/etc/vre/session.json", True)
    bind(run_dir / "passwd", "/etc/passwd", True)
    bind(run_dir / "group", "/etc/group", True)
    # The directory, not the socket: a restarted hub recreates the socket file.
    bind(settings.hub_socket_dir, f"{INNER_RUN}/hub", True)
    bind(run_dir / "sock", f"{INNER_RUN}/session", False)
    bind(run_dir / "spool", f"{INNER_RUN}/spool", False)
    for path in extra_ro_paths:
        bind(path, path, True)

    # the session's own /tmp: Podman chowns it to the container's user ("U"; it ignores "mode"),
    # Docker honours the sticky, world-writable mode
    owner = "U" if engine == "podman" else "mode=1777"
    gpu_host, gpu_env = gpu_config(tuple(gpu_devices), list(gpu_nodes), gpu_mode)
    mem = f"{plan.mem_mb}m"
    host = dict(
        binds=binds,
        read_only=True,
        tmpfs={"/tmp": f"rw,nosuid,nodev,{owner},size={tmp_size}", "/var/tmp": f"rw,nosuid,nodev,{owner},size=64m",
               "/run": "rw,nosuid,nodev,noexec,size=16m"},
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        group_add=[str(settings.sessions_gid)],
        init=init,
        ipc_mode="private",
        network_mode=plan.network,
        sysctls=dict(SYSCTLS),
        mem_limit=mem,
        memswap_limit=mem,  # no escaping the limit into swap
        cpu_period=CFS_PERIOD_US,
        cpu_quota=max(1000, int(plan.cpu * CFS_PERIOD_US)),
        pids_limit=pids_limit,
        auto_remove=False,
        **gpu_host,
    )
    # umask 002: files in the shared workspace stay writable for the project's group
    wrapped = ["/bin/sh", "-c", f'umask {umask:04o} && exec "$@"', "vre-session", *command]
    create = dict(
        image=image,
        name=name,
        command=wrapped,
        user=f"{plan.uid}:{plan.gid}",
        working_dir=HOME,
        hostname=plan.project,
        environment={**env, **gpu_env},
        labels={**plan.labels, "vre.instance": settings.instance},
        stop_signal="SIGTERM",
    )
    return create, host


async def _run(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode, out.decode(errors="replace").strip()


class VREDockerSpawner(PlanSessionMixin, DockerSpawner):
    """Runs each (user, project) session in a container on its project's internal network."""

    start_noun = "container"

    pids_limit = Integer(2048, config=True, help="Most processes (and threads) one session may have.")
    stop_grace = Integer(5, config=True, help="Seconds between SIGTERM and SIGKILL when stopping a session.")
    tmp_size = Unicode("2g", config=True, help="Size of the session's /tmp (memory, counted in its limit).")
    session_umask = Integer(0o002, config=True,
                            help="umask in sessions: group-writable files for the shared workspace.")
    host_firewall = Bool(
        True, config=True,
        help="Reject, with a host firewall rule (iptables and ip6tables), everything a project network's "
             "containers send to the host's side of their bridge (the gateway address, the engine's DNS). "
             "Switch off only where the host's own firewall already does so.",
    )
    gpu_mode = CaselessStrEnum(
        ["devices", "device_requests"], "devices", config=True,
        help="How leased GPUs reach a container: device nodes (any engine; the image brings the user-space "
             "driver) or Docker's device_requests (the NVIDIA container toolkit).",
    )
    extra_ro_paths = List(
        Unicode(), config=True,
        help="Host paths to show read-only inside every session at the same path (development only).",
    )
    remove = Bool(True, config=True,
                  help="Remove a session's container when it stops (its state lives in home and workspace).")
    client_kwargs = Dict(config=True,
                         help="Extra arguments of docker.APIClient (default: base_url from settings.docker_url).")

    @default("client_kwargs")
    def _client_kwargs_default(self):
        return {"base_url": self.settings.docker_url}

    @default("image")
    def _image_default(self):
        return self.settings.notebook_image

    def _object_name_default(self):
        # <instance>-<user>-<project>: also what the engine's `ps` shows
        return f"{self.settings.instance}-{self.user.name}-{self.name}"

    # -- state ----------------------------------------------------------------------------
    def get_state(self):
        state = super().get_state()
        if self.object_id:
            state.update(self._plan_state())
        return state

    def load_state(self, state):
        super().load_state(state)
        self._load_plan_state(state)

    def clear_state(self):
        super().clear_state()
        self._clear_plan_state()

    # -- start ----------------------------------------------------------------------------
    async def start(self):
        plan = self.plan or await asyncio.to_thread(self._build_plan, user_options_profile(self.user_options))
        self.session_id, self.island = plan.session_id, plan.network
        self.audit_session = f"{plan.session_id}-{secrets.token_hex(4)}"
        self._stop_reason = "stopped"

        async def start_container():
            try:
                return await self._start(plan)
            except BaseException:
                await self._cleanup()
                raise

        return await self._audit_start(plan, start_container)

    def _image_for(self, plan: SessionPlan) -> str:
        if plan.gpus and self.settings.notebook_gpu_image:
            return self.settings.notebook_gpu_image
        return self.image

    async def _start(self, plan: SessionPlan) -> str:
        self._progress(10, f"Preparing project {plan.project}: {len(plan.datasets)} dataset(s) read-only")
        image = self._image_for(plan)
        try:
            image_info = await self.docker("inspect_image", image)
        except NotFound:
            raise DockerBackendError(f"the session image {image} is not on this host; an admin builds it "
                                     "with `vre images build`") from None
        if plan.gpus:
            self.gpu_devices = list(await asyncio.to_thread(self._lease_gpus, plan))
            self._progress(20, f"GPU(s) {', '.join(map(str, self.gpu_devices))} reserved for this session")
        await asyncio.to_thread(self._prepare_host, plan)

        self._progress(30, f"Joining the project's network island (internal network {plan.network}: no route out)")
        await self._remove_container(self.object_name)  # a leftover of a crashed run never lingers
        create, host = container_config(
            self.settings, plan, image=image, name=self.object_name, run_dir=self._run_dir(),
            env=self._environment(plan), command=["jupyterhub-singleuser", *server_args(plan, self.args)],
            gpu_devices=self.gpu_devices, gpu_nodes=gpus.device_nodes(self.gpu_devices), gpu_mode=self.gpu_mode,
            pids_limit=self.pids_limit, tmp_size=self.tmp_size, extra_ro_paths=self.extra_ro_paths,
            umask=self.session_umask,
            # the notebook image's entrypoint is an init (tini); images without one get the engine's
            init=not (image_info.get("Config") or {}).get("Entrypoint"), engine=await self._engine())
        create["host_config"] = self.client.create_host_config(**host)
        async with _locks.setdefault(plan.network, asyncio.Lock()):
            await self._ensure_network(plan)
            obj = await self.docker("create_container", **create)
        self.object_id = obj["Id"]
        self.log.info("Created container %s (%s) for %s from %s", self.object_name, self.object_id[:12],
                      plan.session_id, image)

        self._progress(50, f"Starting the container ({plan.cpu:g} CPU, {plan.mem_mb} MiB)")
        await self.docker("start", self.object_id)
        self._progress(70, "Waiting for JupyterLab to listen")
        await self._wait_for_socket()
        self._progress(90, "Server is up; connecting")
        return self._socket_url()

    async def _wait_for_socket(self) -> None:
        sock = self._socket_path()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        next_check = loop.time() + 0.5
        while not sock.exists():
            now = loop.time()
            if now >= next_check:
                next_check = now + 0.5
                state = await self._container_state()
                if state is None or not state.get("Running"):
                    code = (state or {}).get("ExitCode")
                    self.log.error("Container %s exited with %s:\n%s", self.object_name, code, await self._log_tail())
                    raise RuntimeError(f"the session's server exited during start (code {code}); "
                                       "an admin can read its log in the hub's log")
            if now > deadline:
                raise TimeoutError(f"the session's server did not start within {self.start_timeout} s")
            await asyncio.sleep(0.05)

    async def _log_tail(self, lines: int = 30) -> str:
        try:
            return (await self.docker("logs", self.object_id, tail=lines)).decode(errors="replace")
        except (APIError, OSError):
            return ""

    def _prepare_host(self, plan: SessionPlan) -> None:
        run = self._prepare_run_dir(plan)
        os.chmod(run, 0o755)
        (run / "session.json").write_text(json.dumps(plan.manifest(), indent=2))
        for name, text in identity_files(plan, self.settings.sessions_gid).items():
            (run / name).write_text(text)

    def _environment(self, plan: SessionPlan) -> dict[str, str]:
        env = self.get_env()  # JUPYTERHUB_* (token, API URL, service prefix, ...)
        env.update(plan.env)
        env.update({
            "LANG": "C.UTF-8",
            "SHELL": "/bin/bash",
            "JUPYTER_RUNTIME_DIR": "/tmp/jupyter-runtime",
            **relay_env(self.settings, self._identity(plan.user, plan.project)),
        })
        return env

    _engine_name: str | None = None

    async def _engine(self) -> str:
        """``podman`` or ``docker``: which engine answers at docker_url (asked once)."""
        cls = type(self)
        if cls._engine_name is None:
            version = await self.docker("version")
            names = " ".join(c.get("Name", "") for c in version.get("Components") or [])
            cls._engine_name = "podman" if "podman" in names.lower() else "docker"
        return cls._engine_name

    # -- the project's network ----------------------------------------------------------------
    async def _ensure_network(self, plan: SessionPlan) -> None:
        """The project's internal network, created if missing, with the host side closed."""
        try:
            net = await self.docker("inspect_network", plan.network)
        except NotFound:
            self.log.info("Creating internal network %s for project %s", plan.network, plan.project)
            await self.docker("create_network", **network_config(self.settings, plan))
            net = await self.docker("inspect_network", plan.network)
        labels = net.get("Labels") or {}
        if not net.get("Internal") or labels.get("vre.instance") != self.settings.instance:
            raise DockerBackendError(
                f"a network named {plan.network} exists but is not this VRE's internal project network; "
                f"remove it (`podman network rm {plan.network}`) or choose another instance name")
        if self.host_firewall:
            await self._close_host_side(bridge_name(plan.network))

    async def _close_host_side(self, bridge: str) -> None:
        for tool in ("iptables", "ip6tables"):
            rule = ["INPUT", "-i", bridge, "-j", "REJECT"]
            code, _ = await _run(tool, "-w", "-C", *rule)
            if code == 0:
                continue
            if self.object_id:
                self.log.warning("Firewall rule for %s was missing (%s); putting it back", bridge, tool)
            code, out = await _run(tool, "-w", "-I", *rule)
            if code:
                raise DockerBackendError(f"could not close the host side of {bridge} ({tool}: {out}); sessions "
                                         "would reach the host's services. Install iptables, or set "
                                         "c.VREDockerSpawner.host_firewall = False where the host firewall does this")

    async def _release_network(self, network: str) -> None:
        """Remove the project's network when no container is left on it (and its firewall rule)."""
        if not network:
            return
        async with _locks.setdefault(network, asyncio.Lock()):
            try:
                users = await self.docker("containers", all=True, filters={"network": network})
            except APIError as e:
                self.log.warning("Could not list containers on %s: %s", network, e)
                return
            if users:
                return
            try:
                await self.docker("remove_network", network)
            except NotFound:
                pass
            except APIError as e:
                self.log.warning("Could not remove network %s: %s", network, e)
                return
            if self.host_firewall:
                bridge = bridge_name(network)
                for tool in ("iptables", "ip6tables"):
                    while (await _run(tool, "-w", "-D", "INPUT", "-i", bridge, "-j", "REJECT"))[0] == 0:
                        pass

    # -- poll and stop --------------------------------------------------------------------
    async def _container_state(self) -> dict | None:
        try:
            obj = await self.docker("inspect_container", self.object_id or self.object_name)
        except NotFound:
            return None
        return obj.get("State") or {}

    async def poll(self):
        if not self.object_id:
            return 0
        try:
            state = await self._container_state()
        except (APIError, OSError, docker.errors.DockerException) as e:
            # the engine being briefly unavailable must not stop sessions
            self.log.warning("Could not ask the engine about %s: %s; leaving it running", self._log_name, e)
            return None
        if state is None or not state.get("Running"):
            code = (state or {}).get("ExitCode")
            await self._finish(outcome="error", reason=f"the session ended by itself (exit code {code})")
            return 0
        if self.host_firewall and self.island:
            # the rule is the host's state, not the engine's: put it back if something flushed it
            await self._close_host_side(bridge_name(self.island))
        return await self._stop_if_refused()

    async def stop(self, now=False):
        if not self.object_id:  # never started, or already finished by poll()
            return
        await self._finish(grace=0 if now else self.stop_grace, reason=getattr(self, "_stop_reason", "stopped"))

    async def _finish(self, *, reason: str, outcome: str = "ok", grace: float = 0) -> None:
        """Stop what is left, store the session's spooled audit events, record the stop, clean up."""
        identity = self._identity(self.user.name, self.name)
        await self._cleanup(grace, identity)
        await self._audit_stop(identity, reason=reason, outcome=outcome)
        self.audit_session = ""

    async def _remove_container(self, ref: str, grace: float = 0) -> None:
        if not ref:
            return
        try:
            if grace:
                await self.docker("stop", ref, timeout=int(grace))
            await self.docker("remove_container", ref, force=True, v=True)
        except NotFound:
            pass
        except APIError as e:
            if e.status_code != 409:  # 409: already being removed
                raise

    async def _cleanup(self, grace: float = 0, identity=None) -> None:
        """Stop and remove the container, keep its audit spool, release GPUs, the run directory and
        the project's network when unused. Idempotent."""
        try:
            await self._remove_container(self.object_id or self.object_name, grace)
        except APIError as e:
            self.log.error("Could not remove container %s: %s", self.object_name, e)
        self.object_id = ""
        if self.gpu_devices:
            await asyncio.to_thread(self._release_gpus)
        if identity is not None and identity.session:
            replay_spool(self.settings, identity, self._run_dir() / "spool", self.log)
        if self.session_id:
            shutil.rmtree(self._run_dir(), ignore_errors=True)
        await self._release_network(self.island)


def remove_instance_containers(settings: Settings, client: docker.APIClient | None = None) -> int:
    """Remove every session container and project network of this installation (``vre down``)."""
    client = client or docker.APIClient(base_url=settings.docker_url, version="auto")
    removed = 0
    label = f"vre.instance={settings.instance}"
    for c in client.containers(all=True, filters={"label": label}):
        try:
            client.remove_container(c["Id"], force=True, v=True)
            removed += 1
        except NotFound:
            pass
    for net in client.networks(filters={"label": label}):
        try:
            client.remove_network(net["Id"])
        except (NotFound, APIError):
            continue
        for tool in ("iptables", "ip6tables"):
            rule = ["INPUT", "-i", bridge_name(net["Name"]), "-j", "REJECT"]
            while subprocess.run([tool, "-w", "-D", *rule], capture_output=True).returncode == 0:
                pass
    return removed
