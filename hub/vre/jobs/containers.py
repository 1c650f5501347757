"""How jobs run on the docker backend: per pool, a Dask scheduler and workers as containers.

The batch queue follows the sessions: where sessions are containers on their project's internal
network, so are the pool's scheduler and workers, rendered from the same plan by the same
translation (``backends.docker.container_config``): datasets read-only, the image's root
read-only, the account's uid and the project's gid with no capability, the job's CPU, memory and
pids limits on the container, only the granted GPUs, and the pool's island as the only network
(the project's for the shared workers, a network of its own for held ones). A worker with
datasets waits at the launch gate until vre-hostview has marked its mounts, as a session does.

What differs from the sandbox (``executor.LocalDaskExecutor``, whose logic this reuses):

- Containers do not share a loopback, so the scheduler listens on its address in the island and
  the engine publishes that address (``service.scheduler_file``): workers are started with it,
  and the jobs API gives it to a session's ``dask_client`` with its cluster job.
- Runs are found by their container's name (``<instance>-<run>``) and then by their init's pid
  (checked against its cgroups, so a look reads files, not the engine's API), stopped by
  removing the container, and their OOM kills read from the container's memory cgroup (or the
  engine's ``OOMKilled`` when the whole container died of it).
- The engine's socket directories (the agent's, the doorbell) are bind mounts, as in the sandbox:
  the job engine still talks to the agent over its unix socket.
- When a pool stops, its network is removed if no container (a session's either) is left on it.
  The hub and the engine make and remove networks under one lock (``docker.island_lock``), so
  neither removes a network, or its host rule, while the other is putting a container on it.
- Containers are named ``<instance>.<run>``: a dot no session's ``<instance>-<user>-<project>``
  can have. A container is removed only if it carries the ``vre.pool`` label.
- The hub's choices for containers (``host_firewall``, ``gpu_mode``, ``tmp_size`` of
  ``c.VREDockerSpawner`` in the ``jupyterhub`` setting) apply to the engine's containers too.
- When the container engine does not answer, nothing is guessed: starts wait in the queue
  (``EngineUnavailable``) and the pools' looks are tried again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import docker
from docker.errors import APIError, NotFound

from .. import gpus
from ..backends import docker as containers
from ..backends import gate, seccomp
from ..backends.cgroups import process_oom_kills
from ..hostview import client as hostview
from ..plan import SessionPlan, island_name
from ..settings import Settings
from .executor import SCHEDULER_PORT, ExecutorError, LocalDaskExecutor, RecorderUnavailable, Unavailable

log = logging.getLogger("vre.jobs")
#: How often the host-side firewall rules of the pools' islands are checked (and put back).
RULE_CHECK_S = 10
#: Seconds a call to the container engine may take (the engine's loop waits on some of them).
ENGINE_TIMEOUT = 20
#: Seconds a removed container may take to stop running.
KILL_WAIT_S = 15


class EngineUnavailable(Unavailable):
    """The container engine does not answer: a job waits in the queue rather than fail."""


class ContainerDaskExecutor(LocalDaskExecutor):
    """Runs jobs in Dask scheduler and worker containers on each pool's internal network."""

    listen_host = "0.0.0.0"   # its container's own addresses: the island and its loopback
    dask = "dask"             # the notebook image's
    launch_may_leave_run = True   # the engine may make a container, then not answer in time

    def __init__(self, settings: Settings, client: docker.APIClient | None = None):
        super().__init__(settings)
        self.client = client or docker.APIClient(base_url=settings.docker_url, version="auto", timeout=ENGINE_TIMEOUT)
        self._engine: str | None = None
        self._images: dict[str, dict] = {}
        self._rules_checked = 0.0
        self._pids: dict[str, tuple[int, str]] = {}   # run -> (its init's host pid, that pid's cgroups)
        self._ooms: dict[str, int] = {}               # run -> its OOM kills when last read
        # the hub's choices for its containers (c.VREDockerSpawner in the jupyterhub setting)
        self.firewall = bool(containers.spawner_option(settings, "host_firewall", True))
        self.gpu_mode = containers.spawner_option(settings, "gpu_mode", "devices")
        self.tmp_size = containers.spawner_option(settings, "tmp_size", "2g")

    def container(self, name: str) -> str:
        """``<instance>.<run>``: a session's container is ``<instance>-<user>-<project>``, and no
        instance, account or project name has a dot, so no run can be named like a session."""
        return f"{self.settings.instance}.{name}"

    def identity_files(self, plan: SessionPlan) -> dict[str, str]:
        return containers.identity_files(plan, None)

    # -- finding and stopping -------------------------------------------------------------
    def _state(self, name: str) -> dict | None:
        try:
            return self.client.inspect_container(self.container(name)).get("State") or {}
        except NotFound:
            return None

    def _init_pid(self, name: str) -> int:
        """The host pid of the run's init while it runs, else 0. Asked of the engine once per
        run: afterwards its ``/proc/<pid>/cgroup`` (the container's own cgroups) proves it is still
        that run, so the engine's looks read a file instead of calling the container engine."""
        known = self._pids.get(name)
        if known:
            pid, cgroups = known
            try:
                if Path(f"/proc/{pid}/cgroup").read_text() == cgroups:
                    return pid
            except OSError:
                pass
            del self._pids[name]
        state = self._state(name)
        if not state or not state.get("Running") or not state.get("Pid"):
            return 0
        try:
            self._pids[name] = (state["Pid"], Path(f"/proc/{state['Pid']}/cgroup").read_text())
        except OSError:
            return 0
        return state["Pid"]

    def alive(self, name: str) -> bool:
        """Whether the run's container runs; EngineUnavailable when the container engine cannot
        say (never a guess: a run taken for gone re-queues its jobs, one taken for running may be
        given a job it never starts)."""
        try:
            return bool(self._init_pid(name))
        except (APIError, OSError, docker.errors.DockerException) as e:
            raise EngineUnavailable(f"the container engine does not answer ({e}); jobs wait until it does") \
                from None

    def kill(self, name: str) -> None:
        """Remove the run's container and return once it no longer runs (its dataset marks are
        dropped after this: nothing of it may read unrecorded)."""
        self._pids.pop(name, None)
        try:
            info = self.client.inspect_container(self.container(name))
            if ((info.get("Config") or {}).get("Labels") or {}).get("vre.pool") is None:
                raise ExecutorError(f"container {self.container(name)} is not a batch run of this VRE; "
                                    "not removing it")
            self.client.remove_container(info["Id"], force=True, v=True)
        except NotFound:
            return
        except APIError as e:
            # 409, or Podman's 500 "could not be stopped ... stopped": another removal got there first
            if e.status_code != 409 and (self._state(name) or {}).get("Running"):
                raise ExecutorError(f"could not remove container {self.container(name)}: {e}") from None
        except (OSError, docker.errors.DockerException) as e:
            raise EngineUnavailable(f"the container engine does not answer ({e})") from None
        deadline = time.monotonic() + KILL_WAIT_S
        while (state := self._state(name)) and state.get("Running"):
            if time.monotonic() > deadline:
                raise ExecutorError(f"container {self.container(name)} still runs {KILL_WAIT_S} s after its removal")
            time.sleep(0.1)

    def oom_kills(self, name: str) -> int:
        try:
            pid = self._init_pid(name)
            if pid:
                self._ooms[name] = process_oom_kills(pid)
                return self._ooms[name]
            state = self._state(name) or {}   # it ended: did the kernel kill it for its memory?
        except (APIError, OSError, docker.errors.DockerException):
            return self._ooms.get(name, 0)
        return self._ooms.get(name, 0) + (1 if state.get("OOMKilled") else 0)

    async def stop_idle(self) -> None:
        if time.monotonic() - self._rules_checked > RULE_CHECK_S:
            self._rules_checked = time.monotonic()
            found = await asyncio.to_thread(self._list_runs)
            await asyncio.to_thread(self._restore_rules, found)
            # a worker container that is not one of ours (made by a launch whose answer came
            # after its timeout, perhaps after the failed launch's stop) is stopped with the strays
            self._strays |= self._workers_in(found) - self.workers.keys()
        await super().stop_idle()

    def _existing(self, pool: str) -> list[str]:
        """Also the pool's running worker containers (adoption: one whose run directory is gone
        still runs its job)."""
        return sorted(self._workers_in(self._list_runs(), pool) | set(super()._existing(pool)))

    def _list_runs(self) -> list[dict]:
        try:
            return self.client.containers(filters={"label": [f"vre.instance={self.settings.instance}", "vre.pool"]})
        except (APIError, OSError, docker.errors.DockerException) as e:
            log.warning("could not list the pools' containers: %s", e)
            return []

    def _workers_in(self, found: list[dict], pool: str | None = None) -> set[str]:
        """The workers' run names among listed containers (``<instance>.<pool>-worker-<n>``), of
        one ``pool`` or of all."""
        prefix, names = self.container(""), set()
        for c in found:
            pool_of = (c.get("Labels") or {}).get("vre.pool", "")
            if pool is not None and pool_of != pool:
                continue
            for name in c.get("Names") or ():
                if pool_of and name.lstrip("/").startswith(f"{prefix}{pool_of}-worker-"):
                    names.add(name.lstrip("/").removeprefix(prefix))
        return names

    def _restore_rules(self, found: list[dict]) -> None:
        """Put back the host-side rule of every island a worker or scheduler of ours is on (the
        hub's poll does so for sessions; a held pool's island has none)."""
        if not self.firewall:
            return
        for network in {n for c in found for n in ((c.get("NetworkSettings") or {}).get("Networks") or {})}:
            try:
                containers.close_host_side(containers.bridge_name(network), log)
            except containers.DockerBackendError as e:
                log.error("%s", e)

    def pool_stopped(self, pool: str) -> None:
        super().pool_stopped(pool)
        containers.release_island(self.client, self.settings, island_name(self.settings, pool),
                                  firewall=self.firewall, log=log)

    # -- addresses ------------------------------------------------------------------------
    def scheduler_address(self, pool: str) -> str:
        try:
            info = self.client.inspect_container(self.container(self.scheduler_name(pool)))
        except NotFound:
            raise ExecutorError(f"the scheduler of pool {pool} is gone") from None
        network = island_name(self.settings, pool)
        address = ((info.get("NetworkSettings") or {}).get("Networks") or {}).get(network, {}).get("IPAddress")
        if not address:
            raise ExecutorError(f"the scheduler of pool {pool} has no address on {network}")
        return f"tcp://{address}:{SCHEDULER_PORT}"

    def log_tail(self, plan: SessionPlan, lines: int = 20) -> str:
        try:
            return self.client.logs(self.container(plan.session_id), tail=lines).decode(errors="replace")
        except (APIError, OSError):
            return "(no log)"

    # -- launching ------------------------------------------------------------------------
    def _image(self, gpu: bool) -> tuple[str, dict]:
        image = self.settings.notebook_gpu_image if gpu and self.settings.notebook_gpu_image \
            else self.settings.notebook_image
        if image not in self._images:
            try:
                self._images[image] = self.client.inspect_image(image)
            except NotFound:
                raise ExecutorError(f"the session image {image} is not on this host; an admin builds it with "
                                    "`vre images build`") from None
        return image, self._images[image]

    def _engine_name(self) -> str:
        if self._engine is None:
            self._engine = containers.engine_of(self.client)
        return self._engine

    def _create(self, plan: SessionPlan, argv: list[str], devices, limits: dict, gate_dir: Path | None) -> str:
        image, info = self._image(bool(devices))
        engine = self._engine_name()
        sized = replace(plan, cpu=limits["cpu"], mem_mb=limits["mem_mb"])
        create, host = containers.container_config(
            self.settings, sized, image=image, name=self.container(plan.session_id), env=dict(plan.env),
            command=argv, gpu_devices=tuple(devices), gpu_nodes=gpus.device_nodes(devices), gpu_mode=self.gpu_mode,
            pids_limit=limits["pids_max"], tmp_size=self.tmp_size, init=not (info.get("Config") or {}).get("Entrypoint"),
            engine=engine, seccomp=seccomp.security_opt(self.settings, engine), gate_dir=gate_dir, groups=())
        create["labels"]["vre.pool"] = plan.pool
        # its output (a held job's tracebacks too) goes with the container, never to a system journal
        host["log_config"] = {"type": "k8s-file" if engine == "podman" else "json-file", "config": {}}
        create["host_config"] = self.client.create_host_config(**host)
        self.kill(plan.session_id)  # a leftover of a crashed run never lingers
        with containers.island_lock(self.settings, plan.network):  # the hub may be removing it
            containers.ensure_island(self.client, self.settings, plan, firewall=self.firewall, log=log)
            return self.client.create_container(**create)["Id"]

    async def _launch(self, plan: SessionPlan, argv: list[str], devices, *, limits: dict) -> None:
        gate_dir = None
        if gate.dataset_mounts(plan):
            gate_dir = plan.run_dir / "gate"   # the run directory is fresh: no "open" from before
            gate_dir.mkdir()
            os.chmod(gate_dir, 0o755)          # the engine's: the worker can look in, never write
        try:
            cid = await asyncio.to_thread(self._create, plan, argv, devices, limits, gate_dir)
            await asyncio.to_thread(self.client.start, cid)
        except ExecutorError:
            raise
        except (APIError, containers.DockerBackendError) as e:
            await asyncio.to_thread(self._kill_quietly, plan.session_id)
            raise ExecutorError(f"the container engine refused {plan.session_id}: {e}") from None
        except (OSError, docker.errors.DockerException) as e:
            raise EngineUnavailable(f"the container engine does not answer ({e}); the job waits until it does") \
                from None
        if gate_dir is not None:
            try:
                pid = (await asyncio.to_thread(self.client.inspect_container, cid))["State"]["Pid"]
                await gate.mark_run(self.settings, plan, pid, plan.session_id)
            except BaseException as e:
                await asyncio.to_thread(self._kill_quietly, plan.session_id)
                if isinstance(e, hostview.HostviewUnavailable):
                    raise RecorderUnavailable(str(e)) from None
                if isinstance(e, hostview.HostviewError):
                    raise ExecutorError(str(e)) from None
                raise
            (gate_dir / "open").touch(mode=0o644)
        log.info("started container %s for %s", self.container(plan.session_id), plan.session_id)

    def _kill_quietly(self, name: str) -> None:
        try:
            self.kill(name)
        except ExecutorError as e:
            log.warning("%s", e)

