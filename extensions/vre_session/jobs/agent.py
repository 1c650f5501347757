"""The job service's hand inside a project's island: a preload of the project's Dask scheduler.

``dask scheduler --preload vre_session.jobs.agent`` serves a small HTTP API on the unix socket
named by ``VRE_AGENT_SOCKET`` (sandbox and docker: the job service, outside the island, reaches
it through that socket). In a pod there is no shared socket: the agent listens on TCP port
``VRE_AGENT_PORT`` and answers only requests with the bearer token ``VRE_AGENT_TOKEN`` (the
engine's, made per pool), which the project's NetworkPolicy opens to the hub's pods alone. The
agent only executes: the queue, quotas and every decision live in the job service and its
database.

- ``POST /jobs``            {"id", "worker", "spec"}: run the job on that worker (a Dask task)
- ``GET /jobs``             what each job is doing: pending, running (since), done (result), error
- ``POST /jobs/<id>/cancel`` kill a running job's process group, or drop a pending one
- ``DELETE /jobs/<id>``      forget a job the service has recorded
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import socket
import time

from distributed import Client
from distributed.diagnostics.plugin import SchedulerPlugin
from tornado import httpserver, netutil, web

from . import task

log = logging.getLogger("vre.jobs.agent")
KEY_PREFIX = "vre-job-"


def job_key(job_id: int) -> str:
    return f"{KEY_PREFIX}{job_id}"


def worker_resource(worker: str) -> str:
    """The resource only the named worker advertises: a job runs exactly where it was placed."""
    return f"vre-{worker}"


def wake_engine() -> None:
    """Tell the job service that something ended, so the next job starts now rather than at its
    next look (best effort: the service also looks by itself)."""
    path = os.environ.get("VRE_ENGINE_WAKE")
    if not path:
        return
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"!", socket.MSG_DONTWAIT, path)   # a full queue: dropped, never waited for
    except OSError:
        pass


class Agent(SchedulerPlugin):
    name = "vre-job-agent"

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.jobs: dict[int, dict] = {}
        self._client: Client | None = None

    # scheduler plugin: note when a job's task reaches its worker
    def transition(self, key, start, finish, *args, **kwargs):
        if isinstance(key, str) and key.startswith(KEY_PREFIX) and finish == "processing":
            job = self.jobs.get(int(key[len(KEY_PREFIX):]))
            if job is not None and job["state"] == "pending":
                job.update(state="running", started=time.time())

    async def client(self) -> Client:
        if self._client is None:
            self._client = await Client(self.scheduler.address, asynchronous=True, name="vre-job-agent")
        return self._client

    def worker_address(self, name: str) -> str | None:
        for address, ws in self.scheduler.workers.items():
            if str(ws.name) == name:
                return address
        return None

    async def submit(self, job_id: int, worker: str, spec: dict) -> None:
        if job_id in self.jobs:
            return  # idempotent: the service may retry after a lost reply
        client = await self.client()
        future = client.submit(task.run_job, spec, key=job_key(job_id), pure=False,
                               resources={worker_resource(worker): 1})
        self.jobs[job_id] = {"state": "pending", "worker": worker, "started": None, "result": None,
                             "error": None, "future": future}
        asyncio.ensure_future(self._collect(job_id, future))

    async def _collect(self, job_id: int, future) -> None:
        job = self.jobs[job_id]
        try:
            job["result"] = await future
            job["state"] = "done"
        except asyncio.CancelledError:
            job.update(state="done", result={"returncode": None, "cancelled": True, "timed_out": False})
        except Exception as e:  # the task itself failed (not the job): say what happened
            job.update(state="error", error=f"{type(e).__name__}: {e}")
        wake_engine()


    async def cancel(self, job_id: int) -> bool:
        job = self.jobs.get(job_id)
        if job is None:
            return False
        client = await self.client()
        if job["state"] == "pending":
            await client.cancel(job["future"], force=True)
            job.update(state="done", result={"returncode": None, "cancelled": True, "timed_out": False})
            return True
        address = self.worker_address(job["worker"])
        if address is None:
            return False
        found = await client.run(task.kill, job_id, workers=[address])
        return any(found.values())

    def status(self) -> dict:
        jobs = {str(i): {k: v for k, v in j.items() if k != "future"} for i, j in self.jobs.items()}
        workers = sorted(str(ws.name) for ws in self.scheduler.workers.values())
        return {"jobs": jobs, "workers": workers, "time": time.time()}


class _Handler(web.RequestHandler):
    def initialize(self, agent: Agent, token: str = ""):
        self.agent, self.token = agent, token

    def prepare(self):
        if self.token and not hmac.compare_digest(self.request.headers.get("Authorization", "").encode(),
                                                  f"Bearer {self.token}".encode()):
            raise web.HTTPError(401)

    def reply(self, data, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))


class JobsHandler(_Handler):
    def get(self):
        self.reply(self.agent.status())

    async def post(self):
        body = json.loads(self.request.body)
        await self.agent.submit(int(body["id"]), body["worker"], body["spec"])
        self.reply({"ok": True}, 201)


class JobHandler(_Handler):
    async def post(self, job_id: str, action: str):
        if action != "cancel":
            raise web.HTTPError(404)
        self.reply({"found": await self.agent.cancel(int(job_id))})

    def delete(self, job_id: str, action: str | None = None):
        self.agent.jobs.pop(int(job_id), None)
        self.reply({"ok": True})


#: The shortest token the agent accepts on TCP (the engine's are 43 characters).
MIN_TOKEN = 32


async def dask_setup(scheduler) -> None:
    path = os.environ.get("VRE_AGENT_SOCKET", "")
    # out of os.environ (the process's initial environment in /proc still has it: code run on the
    # scheduler, which Dask lets the project run, can read it; the agent is the project's side)
    token = os.environ.pop("VRE_AGENT_TOKEN", "")
    if not path and len(token) < MIN_TOKEN:
        # Dask only logs a preload's failure and runs on: a scheduler without its agent is of no use
        log.critical("the job agent needs VRE_AGENT_SOCKET, or VRE_AGENT_PORT with a VRE_AGENT_TOKEN of at least "
                     "%d characters; stopping the scheduler", MIN_TOKEN)
        logging.shutdown()
        os._exit(2)
    agent = Agent(scheduler)
    scheduler.add_plugin(agent)
    args = {"agent": agent, "token": "" if path else token}
    app = web.Application([(r"/jobs", JobsHandler, args), (r"/jobs/(\d+)(?:/(cancel))?", JobHandler, args)])
    server = httpserver.HTTPServer(app)
    if path:
        if os.path.exists(path):
            os.unlink(path)
        server.add_socket(netutil.bind_unix_socket(path, mode=0o600))
        log.info("vre job agent listening on %s", path)
    else:
        port = int(os.environ["VRE_AGENT_PORT"])
        server.listen(port, address="0.0.0.0")
        log.info("vre job agent listening on port %d (bearer token)", port)
