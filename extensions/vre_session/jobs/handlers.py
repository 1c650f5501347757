"""``<server>/vre/api/jobs/...``: the Lab's jobs panel talks to the hub's queue through its own server.

The browser holds only this server's session; the server forwards to the hub's jobs API over the
hub's unix socket with its own token (which the hub maps to the same user), so the panel needs no
hub login and no token in the page. The hub decides everything; this only relays.
"""

from __future__ import annotations

import asyncio
import json

from jupyter_server.base.handlers import APIHandler
from tornado import web

from . import request


class JobsProxyHandler(APIHandler):
    async def _relay(self, method: str, path: str) -> None:
        body = None
        if method == "POST":
            try:
                body = json.loads(self.request.body or b"{}")
            except ValueError:
                raise web.HTTPError(400, "the request body must be JSON") from None
            if isinstance(body, dict):
                body.setdefault("project", self.settings.get("vre_project"))
        path = path or ""
        query = f"?{self.request.query}" if self.request.query else ""
        try:
            status, payload = await asyncio.to_thread(request, method, path + query, body)
        except OSError as e:
            raise web.HTTPError(502, f"the hub's batch queue is not reachable: {e}") from None
        self.set_status(status)
        self.finish(json.dumps(payload))

    @web.authenticated
    async def get(self, path: str = ""):
        await self._relay("GET", path)

    @web.authenticated
    async def post(self, path: str = ""):
        await self._relay("POST", path)


ROUTES = [(r"/vre/api/jobs(/\d+(?:/log|/cancel|/rerun)?)?/?", JobsProxyHandler)]
