"""``<server>/vre/api/airlock/...``: the Lab's export-requests panel talks to the hub's airlock
through its own server, as the jobs panel does (``jobs/handlers.py``): this server forwards to the
VRE service's API (``VRE_API_URL`` + ``/airlock/...``, its unix socket) with the server's token,
which the hub maps to the same user. The hub decides everything; this only relays.

Only the JSON routes are relayed. Released files are never downloaded through the session (its
downloads are refused by the access layer's policy): the panel links to the VRE service's own
download route, where the user's hub login applies and every download is recorded.
"""

from __future__ import annotations

import asyncio
import json
import re

from jupyter_server.base.handlers import APIHandler
from tornado import web

from .jobs import JobError, service_request

#: What the panel may ask for (below api/airlock): no downloads, no reviews.
ALLOWED = re.compile(r"/rules/[a-z0-9-]+|/requests(/\d+(/files(/\d+(/update)?)?|/check|/submit|/withdraw|/record)?)?")


def request(method: str, path: str, body: dict | None = None, *, timeout: float = 300) -> tuple[int, dict]:
    """One call to the airlock API (``path`` below /services/vre/api/airlock); (status, JSON).
    A submission copies and hashes every file before it answers: the timeout is generous."""
    return service_request("airlock", method, path, body, timeout=timeout)


class AirlockProxyHandler(APIHandler):
    async def _relay(self, method: str, path: str) -> None:
        path = path or ""
        if not ALLOWED.fullmatch(path):
            raise web.HTTPError(404, "not an airlock route of the Lab (downloads come from the VRE service)")
        body = None
        if method in ("POST", "PATCH"):
            try:
                body = json.loads(self.request.body or b"{}")
            except ValueError:
                raise web.HTTPError(400, "the request body must be JSON") from None
            if isinstance(body, dict) and path == "/requests":
                body.setdefault("project", self.settings.get("vre_project"))
        query = f"?{self.request.query}" if self.request.query else ""
        try:
            status, payload = await asyncio.to_thread(request, method, path + query, body)
        except (OSError, JobError) as e:
            raise web.HTTPError(502, f"the hub's airlock is not reachable: {e}") from None
        self.set_status(status)
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(payload))

    @web.authenticated
    async def get(self, path: str = ""):
        await self._relay("GET", path)

    @web.authenticated
    async def post(self, path: str = ""):
        await self._relay("POST", path)

    @web.authenticated
    async def patch(self, path: str = ""):
        await self._relay("PATCH", path)

    @web.authenticated
    async def delete(self, path: str = ""):
        await self._relay("DELETE", path)


ROUTES = [(r"/vre/api/airlock(/.*)?", AirlockProxyHandler)]
