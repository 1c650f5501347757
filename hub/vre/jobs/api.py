"""The batch queue's REST API, served by the VRE service (``vre.api.service``) under
``/services/vre/api/jobs`` (see extensions/API.md).

Callers: the researcher's browser (the service's login through the hub), a session (its server
token, over the service's unix socket: the ``server`` role carries ``custom:vre-jobs``) and scripts
with a personal token. The scope lets a token use the
queue at all; what it may see and do is decided per project membership, as for sessions.

- ``GET  api/jobs[?project=&state=&limit=]``  jobs of the caller's projects, newest first
  (at most ``limit``, default 200), with queue positions
- ``POST api/jobs``              submit (JSON body; 201 with the job, 400 with what to fix); a JSON
  list of up to 1,000 submits them all or none (201 with ``{"jobs": [...]}``)
- ``GET  api/jobs/<id>``         one job, with progress and output files
- ``GET  api/jobs/<id>/log?offset=N``  its log from byte N: ``{"text", "offset"}``
- ``POST api/jobs/<id>/cancel``  cancel (queued: at once; running: its process group is killed)
- ``POST api/jobs/<id>/rerun``   queue it again as a new job
"""

from __future__ import annotations

import asyncio
import json
import math

from tornado import web

from .. import db as vdb
from ..db import JOB_STATES
from ..claims.files import ReaderUnavailable, warm as warm_files
from ..errors import NotFound, VREError
from ..audit import AuditError, Event, open_store
from ..audit.schema import storable
from ..audit.events import emit
from ..plan import PlanRefused
from ..api.base import ServiceAPIHandler, requires_scope
from ..roles import JOBS_SCOPE
from ..settings import Settings, files_on_host
from . import service

MAX_LIST = 5000
MAX_SUBMIT = 1000      # jobs in one submission (a list)
SUMMARY = ("kind", "target", "profile", "cpu", "mem_mb", "gpus", "max_runtime")   # of a submission, audited
MAX_OFFSET = 1 << 62   # beyond any log (a larger one overflows a file offset)


requires_jobs_scope = requires_scope(JOBS_SCOPE)
#: The answer to each kind of refusal (the first that matches); ReaderUnavailable: the project's
#: claims could not be asked now, try again.
STATUS = ((service.JobRejected, 400), (PlanRefused, 403), (NotFound, 404), (ReaderUnavailable, 503), (VREError, 400))


def status_of(error: VREError) -> int:
    return next(status for kind, status in STATUS if isinstance(error, kind))


def submitted(job: dict, **extra) -> dict:
    """A submission's audit details, from the job as queued (its values checked and bounded)."""
    return {**{k: job[k] for k in SUMMARY}, "name": job["name"], "via": "api", **extra}


def refused(body, reason: str, **extra) -> dict:
    """A refused submission's audit details: what it asked, as text cut short and made valid
    (nothing of it was checked: NaN, half a surrogate pair), and why it was refused."""
    asked = body if isinstance(body, dict) else {}
    kept = {k: v if v is None or isinstance(v, bool) or isinstance(v, (int, float)) and math.isfinite(v)
            else _cut(str(v)) for k, v in asked.items() if k in SUMMARY}
    return {**kept, "reason": _cut(reason, 2000), "via": "api", **extra}


def _cut(text: str, limit: int = 200) -> str:
    return text[:limit].encode("utf-8", "replace").decode()


def project_named(body) -> str | None:
    """The project a refused submission names, if it could be one (else it is only in the details)."""
    name = body.get("project") if isinstance(body, dict) else None
    # printable too: no bidi overrides, line separators or invisible spaces in a column people filter by
    return name if storable("project", name) and name.isprintable() else None


class _JobsHandler(ServiceAPIHandler):
    def initialize(self, vre_settings: Settings):
        super().initialize(vre_settings)
        self.vre = vre_settings

    async def run(self, func, *args, then=None, durable: bool = False):
        """Call ``func(db, user, *args)`` in a thread, in one transaction (``durable``: one that
        carries audit records, ``vdb.engine_for``), and ``then`` on its result once that
        transaction has ended: reads of a job's folder go there, since on claims they may wait
        for a member's claims reader to start, and no database connection should wait with
        them. Errors of both are mapped to answers."""
        user = self.current_user.name

        def call():
            with vdb.session_scope(self.vre.vre_db_url, durable=durable) as db:
                result = func(db, user, *args)
            return then(result) if then is not None else result
        try:
            return await asyncio.to_thread(call)
        except VREError as e:   # a list's refusal is answered as its job's, its message saying which
            cause = e.error if isinstance(e, service.ListRefused) else e
            raise web.HTTPError(status_of(cause), str(e)) from e   # the cause: which body, for the record

    def workspace(self, db, user: str, project: str):
        """The project's workspace as ``user`` reads it, or None where she may not."""
        try:
            return service.workspace_folder(db, self.vre, user, project)
        except (PlanRefused, VREError):
            return None

    def reply(self, data, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(data))

    def job_id(self, raw: str) -> int:
        return int(raw)


def warm(folder) -> None:
    """Start the claims reader behind ``folder`` (``claims.files.warm``); None: nothing to start."""
    if folder is not None:
        warm_files(folder.files, folder.base)


class JobListHandler(_JobsHandler):
    @requires_jobs_scope
    async def get(self):
        project = self.get_query_argument("project", None)
        state = self.get_query_argument("state", None)
        if state is not None and state not in JOB_STATES:
            raise web.HTTPError(400, f"state must be one of {', '.join(JOB_STATES)}")
        try:
            limit = int(self.get_query_argument("limit", "200"))
            assert 1 <= limit <= MAX_LIST
        except (ValueError, AssertionError):
            raise web.HTTPError(400, f"limit must be a whole number from 1 to {MAX_LIST}") from None

        def listing(db, user):
            jobs = service.list_jobs(db, self.vre, user, project, limit=limit, state=state)
            places = {}
            for pid in {j.project_id for j in jobs}:
                places.update(service.positions(db, pid))
            return [service.to_dict(self.vre, j, places.get(j.id) if j.state == "queued" else None) for j in jobs]
        self.reply({"jobs": await self.run(listing)})

    @requires_jobs_scope
    async def post(self):
        """One submission (201 with the job) or a JSON list of them, queued all or none (201 with
        ``{"jobs": [...]}`` in the list's order)."""
        try:
            body = json.loads(self.request.body or b"{}")
        except (ValueError, RecursionError):   # not JSON, or nested beyond what the parser takes
            raise web.HTTPError(400, "the request body must be JSON (nested at most a few hundred deep)") from None
        if not isinstance(body, list):
            self.reply((await self.submit([body], one=True))[0], 201)
            return
        if not 1 <= len(body) <= MAX_SUBMIT:
            raise web.HTTPError(400, f"a list of 1 to {MAX_SUBMIT} jobs can be submitted at once, not "
                                     f"{len(body)}; split it")
        self.reply({"jobs": await self.submit(body, one=False, list=len(body))}, 201)

    async def submit(self, bodies: list, *, one: bool, **extra) -> list[dict]:
        """Queue ``bodies`` (``one``: a single submission, refused in its own words), each with
        its record; a refusal is audited as the refused job's (``ListRefused`` names it)."""
        reading = sorted({b["project"] for b in bodies if isinstance(b, dict) and isinstance(b.get("project"), str)
                          and b.get("kind") in ("notebook", "script")})

        def queue_all(db, user):
            jobs = ([service.submit(db, self.vre, user, bodies[0])] if one
                    else service.submit_many(db, self.vre, user, bodies))
            return self.queue(db, user, jobs, **extra)
        try:
            for project in reading if not files_on_host(self.vre) else ():
                # the submission then reads her script at once: its reader is started first
                await self.run(self.workspace, project, then=warm)
            jobs = await self.run(queue_all, durable=True)
        except web.HTTPError as e:   # ``run`` raises it from the refusal, a list's naming its body
            body = bodies[0] if one else e.__cause__.body if isinstance(e.__cause__, service.ListRefused) else None
            await self.audit_refusal(e, body, **extra)
            raise
        service.wake(self.vre, queued_in=[j["project"] for j in jobs])
        return jobs

    def queue(self, db, user: str, jobs: list, **extra) -> list[dict]:
        """Commit ``jobs`` (checked, added and flushed) with a ``job.submit`` record each, in the
        same transaction (``AuditStore.append_within``): queued with their records or not at all.
        What was written for them is set aside if they are not; the API's view of each is returned."""
        kept = [(j.project.slug, j.id, j.lane) for j in jobs]
        try:
            out = [service.to_dict(self.vre, j) for j in jobs]
            role = jobs[0].account.role   # hers: every job of a submission is
            try:
                events = [Event(action="job.submit", actor=user, actor_role=role, source="hub", project=j["project"],
                                target=f"job/{j['id']}", details=submitted(j, **extra)) for j in out]
            except AuditError as e:   # from checked values: not expected, but then nothing is queued
                raise service.JobRejected(f"the submission cannot be recorded: {e}") from None
            open_store(self.vre).append_within(db.connection().connection.dbapi_connection, events, db.commit)
        except BaseException:
            for k in kept:
                service.set_aside(self.vre, *k)
            raise
        return out

    async def audit_refusal(self, e: web.HTTPError, body, **extra) -> None:
        """Record a refused submission (``body``: the one refused, if known)."""
        await asyncio.to_thread(emit, self.vre, "job.submit", actor=self.current_user.name,
                                outcome="denied" if e.status_code == 403 else "error", project=project_named(body),
                                details=refused(body, e.log_message or "", **extra))


class JobHandler(_JobsHandler):
    @requires_jobs_scope
    async def get(self, job_id: str):
        def one(db, user):
            job = service.get(db, self.vre, user, int(job_id))
            place = service.positions(db, job.project_id).get(job.id) if job.state == "queued" else None
            folder = service.job_files(db, self.vre, job, user) if job.lane == "open" else None
            return job, service.to_dict(self.vre, job, place), folder

        def with_files(found):
            job, data, folder = found
            return {**data, **service.folder_details(self.vre, job, folder=folder)}
        self.reply(await self.run(one, then=with_files))


class JobLogHandler(_JobsHandler):
    @requires_jobs_scope
    async def get(self, job_id: str):
        try:
            offset = max(0, int(self.get_query_argument("offset", "0")))
            assert offset <= MAX_OFFSET
        except (ValueError, AssertionError):
            raise web.HTTPError(400, f"offset must be a whole number of bytes, at most {MAX_OFFSET}") from None

        def find(db, user):
            job = service.get(db, self.vre, user, int(job_id))
            return job, service.job_files(db, self.vre, job, user) if job.lane == "open" else None

        def log(found):
            job, folder = found
            text, nxt = service.member_log(self.vre, job, offset, folder=folder)
            return {"text": text, "offset": nxt, "state": job.state}
        self.reply(await self.run(find, then=log))


class JobActionHandler(_JobsHandler):
    @requires_jobs_scope
    async def post(self, job_id: str, action: str):
        def act(db, user):
            if action == "cancel":
                job = service.cancel(db, self.vre, user, int(job_id))
                event = ("job.cancel", {"while": "queued"}) if job.state == "cancelled" else None
            else:
                job = service.rerun(db, self.vre, user, int(job_id))
                event = ("job.submit", {"rerun_of": job.rerun_of, "kind": job.kind, "target": job.target})
            return service.to_dict(self.vre, job), event
        result, event = await self.run(act)
        if event:  # recorded once the change is committed (never inside its transaction)
            await asyncio.to_thread(emit, self.vre, event[0], actor=self.current_user.name,
                                    project=result["project"], target=f"job/{result['id']}",
                                    details={**event[1], "via": "api"})
        service.wake(self.vre)
        self.reply(result, 201 if action == "rerun" else 200)


def handlers(settings: Settings) -> list[tuple]:
    kw = {"vre_settings": settings}
    return [
        (r"api/jobs/?", JobListHandler, kw),
        (r"api/jobs/(\d+)/?", JobHandler, kw),
        (r"api/jobs/(\d+)/log", JobLogHandler, kw),
        (r"api/jobs/(\d+)/(cancel|rerun)", JobActionHandler, kw),
    ]
