"""The airlock's browser pages in the VRE service (``/services/vre/...``), built on its REST API
(``vre.api.airlock``, docs/airlock.md):

* ``airlock``: the output checkers' list of requests (filters by state and project);
* ``airlock/<id>``: one request for review: files with inline previews (every preview goes through
  the API, which records it), per-file decisions, release / return / reject;
* ``airlock/<id>/download`` and ``airlock/<id>/files/<fid>/download``: the researcher's download
  links (from the Lab panel). A browser arriving without the service's login is sent through the
  hub's OAuth first (silent for a logged-in user), then on to the API's download route, which
  checks, records and streams; the page adds no way around it.

The pages extend the hub's ``page.html`` like the auditor's page. Only output checkers see the
review pages (403 otherwise); the author of a request gets 403 on its page with the API's reason.
"""

from __future__ import annotations

import asyncio

from jupyterhub.utils import url_path_join
from tornado import web

from ..airlock import requests as ops
from ..airlock import review as R
from ..db import AIRLOCK_STATES
from ..errors import NotFound
from ..roles import AIRLOCK_REVIEW_SCOPE, AIRLOCK_SCOPE
from .base import ServiceHandler, requires_scope
from .pages import render


class _AirlockPage(ServiceHandler):
    def api_base(self) -> str:
        return url_path_join(self.hub_auth.base_url, "api/airlock")

    def page_base(self) -> str:
        return url_path_join(self.hub_auth.base_url, "airlock")

    def checker_scope(self) -> bool:
        return bool(self.hub_auth.check_scopes({AIRLOCK_REVIEW_SCOPE}, self.current_user))


class ReviewListPage(_AirlockPage):
    """``GET airlock``: requests to review; the data comes from ``api/airlock/requests``."""

    @requires_scope(AIRLOCK_REVIEW_SCOPE)
    async def get(self):
        self.finish(render(self, "airlock-list.html", airlock_config={
            "api": self.api_base(), "pages": self.page_base(), "states": list(AIRLOCK_STATES),
            "state": self.get_query_argument("state", ""), "project": self.get_query_argument("project", ""),
        }))


class ReviewPage(_AirlockPage):
    """``GET airlock/<id>``: one request for a checker. Authors get 403 (never their own request),
    strangers 404, anyone else without the checker role 403."""

    @requires_scope(AIRLOCK_SCOPE)
    async def get(self, rid):
        actor = ops.Actor(self.current_user.name, checker_scope=self.checker_scope(), via="api",
                          client=self.request.remote_ip)
        try:
            req = await asyncio.to_thread(ops.get, self.vre_settings, actor, int(rid))
        except NotFound as e:
            raise web.HTTPError(404, str(e)) from None
        if "author" in req["you"]:
            raise web.HTTPError(403, f"you are the author of request {rid}: an author can never review their "
                                "own request")
        if "checker" not in req["you"]:
            raise web.HTTPError(403, "only output checkers review airlock requests (ask an admin: "
                                "vre user set-checker)")
        self.finish(render(self, "airlock-review.html", airlock_id=int(rid), airlock_title=req["title"],
                           airlock_config={"api": self.api_base(), "pages": self.page_base(), "id": int(rid),
                                           "decisions": list(R.DECISIONS)}))


class DownloadLink(_AirlockPage):
    """``GET airlock/<id>/download`` (zip) or ``airlock/<id>/files/<fid>/download``: log in if needed
    (hub OAuth), then the API's download route, which decides and records."""

    @requires_scope(AIRLOCK_SCOPE)
    async def get(self, rid, fid=None):
        path = f"requests/{int(rid)}" + (f"/files/{int(fid)}" if fid else "") + "/download"
        self.redirect(url_path_join(self.api_base(), path))


def handlers(settings) -> list[tuple]:
    kw = {"vre_settings": settings}
    return [
        (r"airlock/?", ReviewListPage, kw),
        (r"airlock/(\d+)/?", ReviewPage, kw),
        (r"airlock/(\d+)/download", DownloadLink, kw),
        (r"airlock/(\d+)/files/(\d+)/download", DownloadLink, kw),
    ]
