"""The catalogue's read-only JSON API in the VRE service: ``GET api/catalogue?modality=&body_part=
&condition=&tier=`` answers ``vre.catalog.browse`` for the caller: every dataset's record (metadata
only, never a path or a file), the filter menus, the caller's projects, and per record what each of
them holds (``access``: granted, batch-only, requested, not granted).

It is on the service's unix socket too (``routes(sessions_only=True)``): the Lab's Datasets panel
lists the datasets its project does not have through its server's relay (vre_session.catalogue).
It needs ``custom:vre-catalogue:read``, which session tokens carry; asking for access stays on the
hub's catalogue page (``custom:vre-catalogue``, XSRF, the hub's login).

``GET api/catalogue/<slug>/{record.json,index.sqlite}``, alone on the catalogue listener
(Kubernetes: ``k8s_catalogue_port``), hands the first container of a session's or a batch
worker's pod the catalogue files of the datasets its start mounts, for the ticket the hub gave
that container (``vre.catalog.tickets``): on Kubernetes with claims the hub's catalogue folder is
not on the nodes (``vre.catalog.fetch``). Batch pods may reach that listener and no other: a
held job's code must find no API there to write through.
"""

from __future__ import annotations

import asyncio
import json
import os

from sqlalchemy import select
from tornado import web

from .. import db as vdb
from ..catalog import tickets
from ..catalog.browse import FILTERS, browse
from ..projects import datasets_for
from ..roles import CATALOGUE_READ_SCOPE
from .base import ServiceAPIHandler, requires_scope


class CatalogueAPIHandler(ServiceAPIHandler):
    """``GET api/catalogue``: the records matching the filters, for the caller."""

    @requires_scope(CATALOGUE_READ_SCOPE)
    async def get(self):
        unknown = sorted(set(self.request.query_arguments) - set(FILTERS))
        if unknown:
            raise web.HTTPError(400, f"unknown filter {', '.join(map(repr, unknown))}: the filters are "
                                     f"{', '.join(FILTERS)}")
        filters = {k: self.get_query_argument(k, "") for k in FILTERS}
        user = self.current_user.name
        project = session_project(self.current_user)

        def load():
            with vdb.session_scope(self.vre_settings.vre_db_url) as db:
                return browse(db, user, filters, only_project=project)
        result = await asyncio.to_thread(load)
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(result))


def session_project(model: dict) -> str | None:
    """The project of the session whose server token calls (JupyterHub expands the server role's
    ``access:servers!server`` to that one server, named after the project), None for any other
    caller. Code in a session sees what its own project holds and asks, not the member's other
    projects (their names, grants, requests, co-members)."""
    scopes = set(model.get("scopes") or ())
    servers = {s.partition("=")[2] for s in scopes if s.startswith("access:servers!server=")}
    broader = any(s == "access:servers" or s.startswith("access:servers!user") for s in scopes)
    if len(servers) != 1 or broader:
        return None
    owner, _, server = servers.pop().partition("/")
    return server if owner == model.get("name") and server else None


#: The files of a dataset's catalogue folder a pod may fetch.
FETCHED_FILES = ("record.json", "index.sqlite")
CHUNK = 1 << 20


class CatalogueFileHandler(web.RequestHandler):
    """``GET api/catalogue/<slug>/<file>`` with ``Authorization: vre-ticket <ticket>``: a
    catalogue file of a dataset the ticket's pod start (a session's or a batch worker's) mounts,
    while the project's grants still mount it in that role and, for a Kubernetes Job's pod, its
    job has not ended (``vre.catalog.tickets``). On the catalogue listener only: never from outside."""

    def initialize(self, vre_settings):
        self.vre_settings = vre_settings

    def _fail(self, status: int, message: str) -> None:
        self.set_status(status)
        self.finish({"status": status, "message": message})

    async def get(self, slug: str, name: str):
        scheme, _, ticket = (self.request.headers.get("Authorization") or "").partition(" ")
        try:
            if scheme != "vre-ticket":
                raise ValueError("no ticket")
            t = tickets.check(self.vre_settings, ticket)
        except (ValueError, KeyError, TypeError):
            return self._fail(403, "a pod's catalogue ticket is required")
        unmounted = f"project {t.project} has no dataset {slug!r} mounted in its {t.role} pods"
        if slug not in t.slugs:
            return self._fail(404, unmounted)

        def refusal() -> str:
            with vdb.session_scope(self.vre_settings.vre_db_url) as db:
                row = db.scalar(select(vdb.Project).where(vdb.Project.slug == t.project))
                if row is None or slug not in {d.slug for d in datasets_for(row, t.role)[0]}:
                    return unmounted
                if t.job is not None:
                    job = db.get(vdb.Job, t.job)
                    if job is None or job.project_id != row.id or job.state in vdb.JOB_FINAL:
                        return f"job {t.job} has ended: its catalogue ticket with it"
                return ""
        why = await asyncio.to_thread(refusal)
        if why:
            return self._fail(404, why)
        try:
            f = open(self.vre_settings.catalog_dir / slug / name, "rb")
        except FileNotFoundError:
            return self._fail(404, f"dataset {slug!r} has no {name} (not indexed yet)")
        with f:
            self.set_header("Content-Type", "application/json" if name.endswith(".json") else "application/vnd.sqlite3")
            self.set_header("Content-Length", str(os.fstat(f.fileno()).st_size))
            self.set_header("Cache-Control", "no-store")
            while chunk := await asyncio.to_thread(f.read, CHUNK):
                self.write(chunk)
                await self.flush()
        self.finish()


def handlers(settings) -> list[tuple]:
    return [(r"api/catalogue/?", CatalogueAPIHandler, {"vre_settings": settings})]


def fetch_handlers(settings) -> list[tuple]:
    """The catalogue listener's one route (``vre.api.service``)."""
    files = "|".join(n.replace(".", r"\.") for n in FETCHED_FILES)
    return [(rf"api/catalogue/([a-z][a-z0-9-]{{0,62}})/({files})", CatalogueFileHandler, {"vre_settings": settings})]
