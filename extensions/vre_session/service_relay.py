"""The Lab panels' relay to the VRE service (jobs, airlock): the browser holds only this server's
session; the server forwards each JSON call to the VRE service's API over the hub's unix socket
with its own token (which the hub maps to the same user), so a panel needs no hub login and no
token in the page. The hub decides everything; a relay only forwards what its routes allow.
"""

from __future__ import annotations

import asyncio
import json

from jupyter_server.base.handlers import APIHandler
from tornado import web

from .jobs import JobError, service_request


class ServiceRelayHandler(APIHandler):
    """Forward a panel's call to ``/services/vre/api/<section><path>``. Subclasses name the section,
    the methods they relay (``SUPPORTED_METHODS``: anything else is 405 here) and what may pass."""

    section = ""
    #: what the 502 names when the hub cannot be reached
    service = "the hub"
    timeout = 30.0

    def allowed(self, path: str) -> bool:
        return True

    def adds_project(self, path: str) -> bool:
        """Whether a body sent to ``path`` defaults to this session's project."""
        return True

    def query(self) -> str:
        """The query string passed on (as asked, by default)."""
        return self.request.query

    async def _relay(self, method: str, path: str | None) -> None:
        path = path or ""
        if not self.allowed(path):
            raise web.HTTPError(404, f"not a route of the Lab's {self.section} panel")
        body = None
        if method in ("POST", "PATCH"):
            try:
                body = json.loads(self.request.body or b"{}")
            except (ValueError, RecursionError):   # not JSON, or nested beyond what the parser takes
                raise web.HTTPError(400, "the request body must be JSON") from None
            if self.adds_project(path):   # one submission, or each of a list
                for item in body if isinstance(body, list) else [body]:
                    if isinstance(item, dict):
                        item.setdefault("project", self.settings.get("vre_project"))
        query = f"?{q}" if (q := self.query()) else ""
        try:
            status, payload = await asyncio.to_thread(service_request, self.section, method, path + query, body,
                                                      timeout=self.timeout)
        except (OSError, JobError) as e:
            raise web.HTTPError(502, f"{self.service} is not reachable: {e}") from None
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
