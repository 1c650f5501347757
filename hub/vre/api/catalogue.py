"""The catalogue's read-only JSON API in the VRE service: ``GET api/catalogue?modality=&body_part=
&condition=&tier=`` answers ``vre.catalog.browse`` for the caller: every dataset's record (metadata
only, never a path or a file), the filter menus, the caller's projects, and per record what each of
them holds (``access``: granted, batch-only, requested, not granted).

It is on the service's unix socket too (``routes(sessions_only=True)``): the Lab's Datasets panel
lists the datasets its project does not have through its server's relay (vre_session.catalogue).
It needs ``custom:vre-catalogue:read``, which session tokens carry; asking for access stays on the
hub's catalogue page (``custom:vre-catalogue``, XSRF, the hub's login).
"""

from __future__ import annotations

import asyncio
import json

from tornado import web

from .. import db as vdb
from ..catalog.browse import FILTERS, browse
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


def handlers(settings) -> list[tuple]:
    return [(r"api/catalogue/?", CatalogueAPIHandler, {"vre_settings": settings})]
