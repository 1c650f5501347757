"""Claims readers on Kubernetes: a pod per (project, member) that mounts the member's home and the
project's workspace claims read-only, as the member's uid, and answers the hub's questions about
them (``vre.claims.reader``); and one per held pool, in its namespace, that mounts the held jobs'
claim as the pool's uid (for the airlock's exports of held outputs). The hub starts one when the
airlock or the job service first needs the files; it ends after ``IDLE_S`` without a question
(its own timer: a reader outlives no hub for long) and the hub starts a fresh one when it next
needs it.

Why a pod: the hub cannot mount another namespace's claims, and the files must be read by code
the researcher cannot change, outside her session (she could answer for a process in it). The
reader runs the session image's Python on source the hub passes in its command, as her uid (what
she can read, no more), with a read-only root, no capabilities, no service-account token, and a
token of its own in a Secret: other pods of the project reach its port (the project is an
island), and another member must not read her home through it. Only the hub's pods may connect
(the project's ``hub-to-readers`` policy).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
from kubernetes_asyncio.client import ApiClient, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from ..backends import kubernetes as k8s
from ..errors import VREError
from ..hostfiles import write_private
from ..plan import SessionPlan
from ..settings import Settings
from . import reader
from .files import READ_MAX, ReaderFiles, ReaderUnavailable

log = logging.getLogger("vre.claims")
#: Where the reader sees the claims.
ROOT = "/claims"
#: Seconds without a question after which a reader exits.
IDLE_S = 120
#: Seconds a reader may take to answer after its pod was created (placed, volumes, Python).
START_S = 120
#: Seconds an API call may take.
API_TIMEOUT = 20
#: Seconds a failed start of a member's reader is remembered: her requests meanwhile are answered at once.
FAILED_START_S = 30
TOKEN_KEY = "token"


def reader_path(kind: str) -> str:
    """Where a mount of ``kind`` (home, workspace, held) is in the reader."""
    return f"{ROOT}/{kind}"


def read_kinds(plan: SessionPlan) -> tuple[str, ...]:
    """What a reader of ``plan`` mounts: a member's home and the workspace (a session plan), or
    the held jobs' folder (a held pool's plan; not its home, which is the pool's business)."""
    return ("home", "workspace") if plan.role == "session" else ("held",)


def reader_of(plan: SessionPlan) -> str:
    """Whose reader: the member's, or the held pool's (its members' readers are one)."""
    return plan.user if plan.role == "session" else plan.pool


def reader_pod(settings: Settings, plan: SessionPlan, name: str, *, image: str,
               pull_policy: str = "IfNotPresent") -> dict:
    """The reader of ``plan``'s claims (``read_kinds``)."""
    k8s.check_image(settings, image)
    volumes, mounts = [], []
    for m in plan.mounts:
        if m.kind in read_kinds(plan):
            source = k8s.storage_source(settings, plan, replace(m, readonly=True))
            volumes.append({"name": m.kind, **source})
            mounts.append({"name": m.kind, "mountPath": reader_path(m.kind), "readOnly": True,
                           "recursiveReadOnly": "IfPossible"})
    volumes.append({"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}})
    mounts.append({"name": "tmp", "mountPath": "/tmp"})
    limits = {"cpu": k8s.cpu_quantity(k8s.READER_LIMITS["cpu"]), "memory": f"{k8s.READER_LIMITS['mem_mb']}Mi"}
    source = Path(reader.__file__).read_text()
    container = {
        "name": "reader", "image": image, "imagePullPolicy": pull_policy, "workingDir": "/",
        "command": ["python3", "-I", "-c", source, "--root", ROOT, "--port", str(k8s.READER_PORT),
                    "--idle", str(IDLE_S)],
        "env": [{"name": "VRE_READER_TOKEN", "valueFrom": {"secretKeyRef": {"name": name, "key": TOKEN_KEY}}}],
        "volumeMounts": mounts,
        "ports": [{"name": "reader", "containerPort": k8s.READER_PORT, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": k8s.READER_PORT}, "periodSeconds": 1, "failureThreshold": 3},
        "resources": {"requests": dict(limits), "limits": limits},
        "securityContext": k8s.locked_down(plan.uid, plan.gid),
    }
    meta_labels = {**k8s.labels(settings, plan), "vre.role": "reader"}
    meta_labels.pop("vre.session", None)
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": k8s.namespace_name(plan), "labels": meta_labels},
            "spec": {"containers": [container], "volumes": volumes, "restartPolicy": "Never",
                     "automountServiceAccountToken": False, "enableServiceLinks": False,
                     "terminationGracePeriodSeconds": 1,
                     "securityContext": {"runAsNonRoot": True, "runAsUser": plan.uid, "runAsGroup": plan.gid,
                                         "seccompProfile": {"type": "RuntimeDefault"}}}}


def reader_secret(pod: dict, token: str) -> dict:
    meta = pod["metadata"]
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "labels": dict(meta["labels"])},
            "stringData": {TOKEN_KEY: token}}


@dataclass
class _Reader:
    namespace: str
    pod: str
    files: ReaderFiles
    used: float


class ClaimReaders:
    """The readers this process started, one per (namespace, member), on an event loop of its
    own (a thread): the airlock asks from worker threads."""

    def __init__(self, settings: Settings):
        self.settings = settings
        options = settings.jupyterhub.get("KubernetesSpawner") or {}
        self.pull_policy = options.get("image_pull_policy", "IfNotPresent")
        self._readers: dict[tuple[str, str], _Reader] = {}
        self._lock = threading.Lock()
        self._starting: dict[tuple[str, str], threading.Lock] = {}
        self._failed: dict[tuple[str, str], tuple[float, str]] = {}   # key -> (when, why) of a failed start
        self._client: ApiClient | None = None
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="vre-claims", daemon=True).start()

    def _run(self, coro, timeout: float):
        try:
            return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)
        except (OSError, TimeoutError, aiohttp.ClientError) as e:
            raise ReaderUnavailable(f"the cluster's API does not answer ({e or type(e).__name__}), so the "
                                    "project's files cannot be read now; nothing was changed, try again") from None
        except k8s.KubernetesBackendError as e:
            raise ReaderUnavailable(f"the project's files cannot be read: {e}") from None
        except ApiException as e:
            raise ReaderUnavailable(f"the project's files cannot be read: the cluster answered {k8s.api_reason(e)}") from None

    async def _core(self) -> CoreV1Api:
        if self._client is None:
            await k8s.load_client_config(self.settings)
            self._client = ApiClient()
        return CoreV1Api(self._client)

    def files(self, plan: SessionPlan) -> ReaderFiles:
        """The files of ``plan``'s claims (``read_kinds``), through a reader that answers."""
        key = (k8s.namespace_name(plan), reader_of(plan))
        with self._lock:
            starting = self._starting.setdefault(key, threading.Lock())
        with starting:  # one start per member at a time; the others wait for it
            with self._lock:
                current = self._readers.get(key)
            # one idle for most of IDLE_S may be about to exit: asked once more, it has IDLE_S again
            if current is not None and (time.monotonic() - current.used < IDLE_S / 2 or current.files.healthy()):
                current.used = time.monotonic()
                return current.files
            if current is not None:
                self._forget(key, current)
            # a start that failed a moment ago is not tried again at once: each of the member's
            # requests would wait minutes for a pod that cannot be placed (a full quota, say)
            failed = self._failed.get(key)
            if failed is not None and time.monotonic() - failed[0] < FAILED_START_S:
                raise ReaderUnavailable(f"{failed[1]} (tried {time.monotonic() - failed[0]:.0f} s ago; "
                                        f"tried again after {FAILED_START_S} s)")
            # the hub's other processes (the VRE service, the access layer's broker, the CLI) use
            # the same reader: one start among them, the others take it over (the quota holds one)
            try:
                with _held(self._shared(key).with_suffix(".lock")):
                    fresh = self._run(self._take_over_or_start(plan, key), START_S + API_TIMEOUT)
            except ReaderUnavailable as e:
                self._failed[key] = (time.monotonic(), str(e))
                raise
            self._failed.pop(key, None)
            with self._lock:
                self._readers[key] = fresh
            return fresh.files

    def _shared(self, key) -> Path:
        """Where this pod's processes keep a reader's pod name and token (root-only, in the run
        directory: a new hub pod starts readers of its own)."""
        return self.settings.run_dir / "claims-readers" / k8s.object_name(f"{key[0]}--{key[1]}")

    async def _take_over_or_start(self, plan: SessionPlan, key) -> _Reader:
        ns, shared = key[0], self._shared(key)
        try:
            known = json.loads(shared.read_text())
        except (OSError, ValueError):
            known = None
        if known:
            core = await self._core()
            try:
                pod = await core.read_namespaced_pod(known["pod"], ns)
            except ApiException as e:
                if e.status != 404:
                    raise k8s.KubernetesBackendError(k8s.api_reason(e)) from None
                pod = None
            ready = pod is not None and pod.status.pod_ip and any(c.ready for c in pod.status.container_statuses or ())
            if ready:
                files = ReaderFiles(pod.status.pod_ip, k8s.READER_PORT, known["token"], ROOT,
                                    on_lost=lambda: self._lost(key))
                if await asyncio.to_thread(files.healthy):
                    return _Reader(ns, known["pod"], files, time.monotonic())
            if pod is not None:
                await self._delete(ns, known["pod"])
        reader = await self._start(plan)
        write_private(shared, json.dumps({"pod": reader.pod, "token": reader.files.token}))
        return reader

    def _forget(self, key, old: _Reader) -> None:
        with self._lock:
            if self._readers.get(key) is old:
                del self._readers[key]
        asyncio.run_coroutine_threadsafe(self._delete(old.namespace, old.pod), self._loop)

    async def _start(self, plan: SessionPlan) -> _Reader:
        core = await self._core()
        ns = k8s.namespace_name(plan)
        try:
            claims = {c.metadata.name for c in (await core.list_namespaced_persistent_volume_claim(
                ns, label_selector=f"vre.instance={self.settings.instance}")).items}
        except ApiException as e:
            if e.status == 404:
                claims = set()
            else:
                raise k8s.KubernetesBackendError(k8s.api_reason(e)) from None
        wanted = {k8s.claim_name(plan, m) for m in plan.mounts if m.kind in read_kinds(plan)}
        if not wanted <= claims:
            if plan.role != "session":
                raise VREError(f"no held job has run in project {plan.project} yet: its folder is made with the "
                               "first")
            raise VREError(f"{plan.user} has no files in project {plan.project} yet: the home and workspace are "
                           "made when the first session starts")
        quota = await asyncio.to_thread(k8s.read_project_quota, self.settings, plan.project)
        for obj in k8s.project_objects(self.settings, plan, quota)[1:]:   # policies, quota: as of now
            await k8s.put_object(self._client, obj)
        name = k8s.object_name(f"reader-{reader_of(plan)}-{secrets.token_hex(3)}")
        token = secrets.token_urlsafe(32)
        pod = reader_pod(self.settings, plan, name, image=self.settings.notebook_image, pull_policy=self.pull_policy)
        await k8s.put_object(self._client, reader_secret(pod, token))
        try:
            await k8s.put_object(self._client, pod)
            made = await core.read_namespaced_pod(name, ns)
            # the Secret goes with its pod
            owner = {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": made.metadata.uid}
            secret = reader_secret(pod, token)
            secret["metadata"]["ownerReferences"] = [owner]
            await k8s.put_object(self._client, secret)
            ip = await self._wait_ready(core, ns, name)
        except BaseException:
            await self._delete(ns, name, secret=True)
            raise
        key = (ns, reader_of(plan))
        files = ReaderFiles(ip, k8s.READER_PORT, token, ROOT, on_lost=lambda: self._lost(key))
        log.info("Started claims reader %s/%s for %s", ns, name, reader_of(plan))
        return _Reader(ns, name, files, time.monotonic())

    def _lost(self, key) -> None:
        with self._lock:
            old = self._readers.get(key)
        if old is not None:
            self._forget(key, old)

    async def _wait_ready(self, core: CoreV1Api, ns: str, name: str) -> str:
        deadline = time.monotonic() + START_S
        why = "it was not placed yet"
        while time.monotonic() < deadline:
            pod = await core.read_namespaced_pod(name, ns)
            waiting, unplaced = k8s.waiting_reason(pod), k8s.unplaced_reason(pod)
            if waiting in k8s.FATAL_WAITING or pod.status.phase in ("Succeeded", "Failed"):
                raise ReaderUnavailable(f"the reader of the project's files could not start ({waiting or pod.status.phase})")
            ready = any(c.ready for c in pod.status.container_statuses or ())
            if ready and pod.status.pod_ip:
                return pod.status.pod_ip
            why = unplaced or waiting or why
            await asyncio.sleep(0.5)
        raise ReaderUnavailable(f"the reader of the project's files did not start within {START_S} s ({why})")

    async def _delete(self, ns: str, name: str, *, secret: bool = False) -> None:
        """Delete a reader's pod (its Secret goes with it), and the Secret itself when the pod
        may never have owned it (a failed start)."""
        for kind in ("pod", "secret") if secret else ("pod",):
            try:
                core = await self._core()
                delete = core.delete_namespaced_pod if kind == "pod" else core.delete_namespaced_secret
                await delete(name, ns, grace_period_seconds=0)
            except (ApiException, OSError, aiohttp.ClientError, k8s.KubernetesBackendError):
                pass   # gone already (a pod exits by itself after IDLE_S)


@contextlib.contextmanager
def _held(lock: Path):
    """An exclusive lock among this pod's processes (flock on ``lock``)."""
    lock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


_READERS: dict[tuple[str, str], ClaimReaders] = {}
_READERS_LOCK = threading.Lock()


def readers(settings: Settings) -> ClaimReaders:
    """This process's readers of ``settings``' instance (one event loop and API client each)."""
    with _READERS_LOCK:
        key = (settings.instance, settings.k8s_kubeconfig)
        if key not in _READERS:
            _READERS[key] = ClaimReaders(settings)
        return _READERS[key]


class ClaimFiles:
    """``Files`` of claims behind one or more readers (a member's; the held pool's), each asked
    for the paths below its mounts, and started at its first question only (a request that is
    merely created or listed starts no pod)."""

    def __init__(self, settings: Settings, *plans: SessionPlan):
        self._settings = settings
        self._plans = {reader_path(kind): plan for plan in plans for kind in read_kinds(plan)}

    def _files(self, path: str) -> ReaderFiles:
        for top, plan in self._plans.items():
            if path == top or path.startswith(top + "/"):
                return readers(self._settings).files(plan)
        raise FileNotFoundError(errno.ENOENT, "not on the project's claims", path)

    def lstat(self, path):
        return self._files(path).lstat(path)

    def readlink(self, path):
        return self._files(path).readlink(path)

    def scandir(self, path):
        return self._files(path).scandir(path)

    def open(self, base, rel):
        return self._files(base).open(base, rel)

    def read(self, base, rel, offset=0, limit=READ_MAX):
        return self._files(base).read(base, rel, offset, limit)

    def walk(self, base, rel):
        return self._files(base).walk(base, rel)
