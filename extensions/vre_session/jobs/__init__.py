"""The batch queue from inside a session: submit jobs, follow them, get an interactive Dask client.

::

    from vre_session import jobs
    job = jobs.submit_notebook("~/project/preprocess.ipynb", params={"series": "1.2.3"}, cpu=2)
    job.wait(); print(job.state, job.log())
    job = jobs.submit_function(sum, [1, 2, 3]);  job.result()   # -> 6
    [j.result() for j in jobs.map_function(abs, [-1, 2, -3])]    # -> [1, 2, 3], one request
    client = jobs.dask_client(workers=2)                          # the project's own workers

Jobs run in the project's restrictions (its datasets read-only, its workspace, no network) and
keep running when this session stops. Outputs land in ``~/project/jobs/<id>/``. The same calls
back the ``vre-job`` command (terminal) and the Lab's jobs panel.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit


FINAL = ("succeeded", "failed", "cancelled", "timed_out")
MAX_SUBMIT = 1000   # jobs in one request (the service's limit)
MAX_SUBMIT_BYTES = 64 * 2**20   # of one request's body (the service reads at most 100 MiB)
LIST_TIMEOUT = 300              # seconds a list's request may take (each of its jobs is checked)
WORKSPACE = "/home/jovyan/project"


class JobError(RuntimeError):
    """The queue refused a request; the message says why (from the hub). From ``map_function``:
    ``jobs``, those of the sweep queued before the refused part."""

    jobs: tuple = ()


def _hub() -> tuple[str, str]:
    """(unix socket path, path prefix) of the VRE service's API (the hub's service ``vre``), from the
    session's environment: ``VRE_API_URL``, a unix-socket URL beside the hub's."""
    parts = urlsplit(os.environ.get("VRE_API_URL", ""))
    if parts.scheme != "http+unix":
        raise JobError("the batch queue is reachable from VRE sessions only (VRE_API_URL is not a VRE service socket)")
    return unquote(parts.netloc), parts.path.rstrip("/")


def service_request(section: str, method: str, path: str, body: dict | list | None = None, *,
                    token: str | None = None, timeout: float = 30) -> tuple[int, dict]:
    """One call to the VRE service's API (``path`` below /services/vre/api/<section>) over its
    unix socket with the server's token; (status, JSON). The jobs client and the Lab's relays
    (jobs, airlock) all go through here."""
    url = os.environ.get("VRE_API_URL", "")
    if urlsplit(url).scheme not in ("http+unix", "http"):
        raise JobError("the batch queue is reachable from VRE sessions only (VRE_API_URL is not the VRE service)")
    from ..relay import connection   # here, not at the top: each job's runner imports this package

    conn, prefix = connection(url, timeout=timeout)
    prefix = prefix.rstrip("/")
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"token {token or os.environ['JUPYTERHUB_API_TOKEN']}",
               "Content-Type": "application/json"}
    try:
        conn.request(method, f"{prefix}/{section}{path}", body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        payload = json.loads(raw or b"{}")
    except ValueError:
        payload = {"message": raw.decode(errors="replace")[:500]}
    return resp.status, payload


def request(method: str, path: str, body: dict | list | None = None, *, token: str | None = None,
            timeout: float = 30) -> tuple[int, dict]:
    """One call to the queue's API (``path`` below /services/vre/api/jobs); (status, JSON)."""
    return service_request("jobs", method, path, body, token=token, timeout=timeout)


def _call(method: str, path: str, body: dict | list | None = None) -> dict:
    status, payload = request(method, path, body)
    if status >= 400:
        raise JobError(payload.get("message") or f"the hub answered {status}")
    return payload


def _project() -> str:
    project = os.environ.get("VRE_PROJECT")
    if not project:
        raise JobError("VRE_PROJECT is not set: submit jobs from a VRE session of the project")
    return project


class Job:
    """A submitted job; attributes refresh on ``refresh()``, ``wait()`` and ``state``."""

    def __init__(self, data: dict):
        self.data = data

    @property
    def id(self) -> int:
        return self.data["id"]

    @property
    def state(self) -> str:
        if self.data["state"] not in FINAL:
            self.refresh()
        return self.data["state"]

    @property
    def outdir(self) -> Path:
        return Path(self.data["outdir"])

    def refresh(self) -> "Job":
        self.data = _call("GET", f"/{self.id}")
        return self

    def wait(self, timeout: float | None = None, poll: float = 1.0) -> "Job":
        """Block until the job ends (or ``timeout`` seconds pass: TimeoutError)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.refresh().data["state"] not in FINAL:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} is still {self.data['state']} after {timeout} s")
            time.sleep(poll)
        return self

    def log(self, offset: int = 0) -> str:
        return _call("GET", f"/{self.id}/log?offset={offset}")["text"]

    def cancel(self) -> "Job":
        self.data = _call("POST", f"/{self.id}/cancel")
        return self

    def rerun(self) -> "Job":
        return Job(_call("POST", f"/{self.id}/rerun"))

    def result(self, timeout: float | None = None):
        """A function job's return value (waits for it; raises JobError if the job did not succeed)."""
        import cloudpickle

        self.wait(timeout)
        if self.data["state"] != "succeeded":
            raise JobError(f"job {self.id} {self.data['state']}: {self.data['reason']}\n{self.log()[-2000:]}")
        with open(self.outdir / "result.pkl", "rb") as f:
            return cloudpickle.load(f)

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.data['kind']} {self.data['target']!r}: {self.data['state']}>"


def submit(kind: str, target: str = "", *, params=None, profile: str | None = None, cpu: float | None = None,
           mem_mb: int | None = None, gpus: int | None = None, max_runtime: int | None = None,
           name: str = "", payload: bytes | None = None, project: str | None = None, held: bool = False) -> Job:
    """Queue a job. ``held``: it also reads the project's batch-only datasets, and its log and
    outputs stay on the hub (this session never sees them); they leave through the airlock."""
    return Job(_call("POST", "", _body(kind, target, params=params, profile=profile, cpu=cpu, mem_mb=mem_mb,
                                       gpus=gpus, max_runtime=max_runtime, name=name, payload=payload,
                                       project=project, held=held)))


def _body(kind: str, target: str = "", *, params=None, profile=None, cpu=None, mem_mb=None, gpus=None,
          max_runtime=None, name: str = "", payload: bytes | None = None, project: str | None = None,
          held: bool = False) -> dict:
    """A submission as the API takes it (see ``submit``)."""
    body = {"project": project or _project(), "kind": kind, "target": target, "params": params,
            "profile": profile, "cpu": cpu, "mem_mb": mem_mb, "gpus": gpus, "max_runtime": max_runtime,
            "name": name, "lane": "held" if held else None}
    if payload is not None:
        body["payload"] = base64.b64encode(payload).decode()
    return {k: v for k, v in body.items() if v is not None}


def _absolute(path) -> str:
    """Paths are taken as this process sees them (relative to its working directory)."""
    return os.path.abspath(os.path.expanduser(str(path)))


def submit_notebook(path: str, params: dict | None = None, **kw) -> Job:
    """Run a notebook of the workspace with papermill; ``params`` fill its "parameters" cell."""
    return submit("notebook", _absolute(path), params=params or {}, **kw)


def submit_script(path: str, args: list | None = None, **kw) -> Job:
    """Run a Python script of the workspace with ``args`` as its command-line arguments."""
    return submit("script", _absolute(path), params={"args": list(args or [])}, **kw)


def submit_function(func, *args, job_kwargs: dict | None = None, **kwargs) -> Job:
    """Run ``func(*args, **kwargs)`` as a job; ``job.result()`` gives its return value.
    Resources go in ``job_kwargs`` (cpu=, mem_mb=, gpus=, max_runtime=, profile=, name=)."""
    import cloudpickle

    payload = cloudpickle.dumps((func, args, kwargs))
    return submit("function", getattr(func, "__qualname__", "function"), payload=payload, **(job_kwargs or {}))


def map_function(func, items, *, job_kwargs: dict | None = None) -> list[Job]:
    """Run ``func(item)`` as a job for each of ``items`` (a parameter sweep), in that order.
    They are submitted in lists (up to MAX_SUBMIT jobs, MAX_SUBMIT_BYTES), each queued all or
    none, not with a request per job; resources as for ``submit_function``. A refused list
    raises JobError, whose ``jobs`` are those queued before it."""
    import cloudpickle

    name = getattr(func, "__qualname__", "function")
    bodies = [_body("function", name, payload=cloudpickle.dumps((func, (item,), {})), **(job_kwargs or {}))
              for item in items]
    queued: list[Job] = []
    for part in _parts(bodies):
        items = f"items {len(queued) + 1}-{len(queued) + len(part)} of the sweep"
        try:
            status, answer = request("POST", "", part, timeout=LIST_TIMEOUT)
        except OSError as e:   # the hub may or may not have queued this part
            why = f"no answer from the hub ({e}); look at the queue before submitting them again"
        else:
            if 200 <= status < 300:
                queued += [Job(data) for data in answer["jobs"]]
                continue
            why = answer.get("message") or f"the hub answered {status}"
        error = JobError(f"{items}: {why}" + (f" (its first {len(queued)} jobs were queued: this error's .jobs)"
                                              if queued else ""))
        error.jobs = tuple(queued)
        raise error
    return queued


def _parts(bodies: list[dict]):
    """``bodies`` in lists the service takes: at most MAX_SUBMIT, and MAX_SUBMIT_BYTES of JSON."""
    part, size = [], 0
    for body in bodies:
        n = len(json.dumps(body))
        if part and (len(part) == MAX_SUBMIT or size + n > MAX_SUBMIT_BYTES):
            yield part
            part, size = [], 0
        part.append(body)
        size += n
    if part:
        yield part


def list_jobs(project: str | None = None) -> list[Job]:
    suffix = f"?project={project}" if project else ""
    return [Job(d) for d in _call("GET", suffix)["jobs"]]


DASHBOARD_PORT = 8787


def dask_client(workers: int = 1, *, timeout: float = 120, **kw):
    """A Dask client on the project's own scheduler with ``workers`` interactive workers (within the
    project's batch quota; they count against it until ``client.vre_job.cancel()`` or their run-time
    limit). The dashboard is at ``<this server>/proxy/8787/status``. Given up (``timeout``, an
    interrupt, a failed connection), the job is cancelled: workers nobody's client reaches would
    hold the project's quota until their run-time limit."""
    from distributed import Client

    job, client = submit("cluster", params={"workers": workers}, **kw), None
    try:
        deadline = time.monotonic() + timeout
        while job.refresh().data["state"] == "queued" or not job.data.get("started_at"):
            if job.data["state"] in FINAL:
                raise JobError(f"the workers did not start: {job.data['reason']}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the workers are still {job.data['state']} after {timeout} s "
                                   f"({job.data.get('reason') or 'quota in use?'}); cancelling job {job.id}")
            time.sleep(0.5)
        # the sandbox's scheduler is on the island's loopback; a container's has its own address
        address = job.data.get("scheduler") or "tcp://127.0.0.1:8786"
        host = urlsplit(address).hostname or "127.0.0.1"
        if host not in ("127.0.0.1", "localhost"):
            _relay_dashboard(host)
        client = Client(address, timeout=timeout)
        client.wait_for_workers(workers, timeout=timeout)
    except BaseException as e:
        if client is not None:
            client.close()
        if job.data["state"] not in FINAL:
            try:
                job.cancel()
            except Exception as c:  # noqa: BLE001 - the first error is the one to tell
                e.add_note(f"job {job.id} could not be cancelled ({c}): cancel it with `vre-job cancel {job.id}`")
        raise
    client.vre_job = job
    return client


_dashboard_target: list[str] = []


def _relay_dashboard(host: str) -> None:
    """Make the scheduler's dashboard (in another container) answer on this session's
    127.0.0.1:8787, where the server's proxy (``/proxy/8787/``) looks for it: a relay thread in
    this kernel. Only a convenience, nothing the VRE's controls rest on: the access layer rules on
    ``/proxy/8787/`` as on any route. A later client in this kernel moves it to its scheduler; if
    another kernel of the session relays already, that one stays."""
    import selectors
    import socket
    import threading

    first = not _dashboard_target
    _dashboard_target[:] = [host]
    if not first:
        return
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", DASHBOARD_PORT))
    except OSError:
        listener.close()
        return
    listener.listen(16)

    def relay(conn):
        """One browser connection: bytes both ways until either side closes, then both close."""
        try:
            upstream = socket.create_connection((_dashboard_target[0], DASHBOARD_PORT), timeout=10)
        except OSError:
            conn.close()
            return
        upstream.settimeout(None)
        with conn, upstream, selectors.DefaultSelector() as sel:
            sel.register(conn, selectors.EVENT_READ, upstream)
            sel.register(upstream, selectors.EVENT_READ, conn)
            while events := sel.select(timeout=300):   # none for 5 minutes: closed
                for key, _ in events:
                    try:
                        data = key.fileobj.recv(65536)
                        if data:
                            key.data.sendall(data)
                    except OSError:
                        data = b""
                    if not data:
                        return

    def serve():
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=relay, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, name="vre-dask-dashboard", daemon=True).start()
