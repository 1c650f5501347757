"""The catalogue and access-request pages of the VRE service (``/services/vre/...``), plain HTML
forms (no script needed), XSRF-protected like every cookie-authenticated POST to the service:

* ``catalogue`` (GET, filters ``modality``, ``body_part``, ``condition``, ``tier``): every dataset's
  record (``vre.catalog.browse``: metadata only), what the caller's projects hold of it, their open
  requests, and a request form; POST asks for access (then on to ``access-requests``);
* ``access-requests`` (GET): the caller's requests with their decisions; for admins and stewards,
  the open requests they may decide, each with an approve and a deny form;
* ``access-requests/<id>/(withdraw|approve|deny)`` (POST): one action.

Every rule is ``vre.access_requests``' (the CLI's too). A refused form comes back as the page with
the message saying what to fix and the values typed (status 400, 403, 404 or 409), never a traceback.
"""

from __future__ import annotations

import asyncio

from .. import access_requests as AR
from .. import db as vdb
from ..catalog.browse import FILTERS, browse
from ..db import GRANT_MODES
from ..roles import CATALOGUE_SCOPE
from .base import requires_scope
from .forms import FormPage, status_of


class _Page(FormPage):
    def page(self, name: str, status: int = 200, **ns) -> None:
        super().page(name, status, modes=list(GRANT_MODES), catalogue_url=self.url("catalogue"),
                     requests_url=self.url("access-requests"), **ns)


class CataloguePage(_Page):
    """``GET catalogue``: the records; ``POST catalogue``: request access for one of one's projects."""

    def filters(self) -> dict:
        return {k: self.get_query_argument(k, "") for k in FILTERS}

    async def show(self, status: int = 200, **ns) -> None:
        def load():
            with vdb.session_scope(self.vre_settings.vre_db_url) as db:
                return browse(db, self.current_user.name, self.filters())
        self.page("catalogue.html", status, catalogue=await asyncio.to_thread(load), **ns)

    @requires_scope(CATALOGUE_SCOPE)
    async def get(self):
        await self.show()

    @requires_scope(CATALOGUE_SCOPE)
    async def post(self):
        f = self.form("project", "dataset", "mode", "justification", "intended_use")
        try:
            req = await asyncio.to_thread(AR.create, self.vre_settings, self.actor(), f["project"], f["dataset"],
                                          mode=f["mode"], justification=f["justification"],
                                          intended_use=f["intended_use"])
        except Exception as e:  # a refusal; anything else is logged and answered with the form kept
            e = self.refusal(e)
            return await self.show(status_of(e), error={"dataset": f["dataset"], "message": str(e)}, form=f)
        self.redirect(self.url("access-requests", done="requested", id=req["id"]), status=303)


class RequestsPage(_Page):
    """``GET access-requests``: mine, and those I may decide."""

    async def show(self, status: int = 200, **ns) -> None:
        who = self.actor()

        def load():
            mine = AR.list_requests(self.vre_settings, who, mine=True)
            with vdb.session_scope(self.vre_settings.vre_db_url) as db:
                decider = AR.decider_of(db, who.name)
            return mine, (AR.to_decide(self.vre_settings, who) if decider else None)
        mine, to_decide = await asyncio.to_thread(load)
        done = self.get_query_argument("done", "")
        self.page("access-requests.html", status, mine=mine, to_decide=to_decide,
                  done=done if done in ("requested", "withdrawn", "approved", "denied") else "",
                  done_id=self.get_query_argument("id", ""), **ns)

    @requires_scope(CATALOGUE_SCOPE)
    async def get(self):
        await self.show()


class RequestAction(RequestsPage):
    """``POST access-requests/<id>/(withdraw|approve|deny)``."""

    @requires_scope(CATALOGUE_SCOPE)
    async def post(self, rid, action):
        rid = int(rid)
        f = self.form("mode", "expires", "reason")
        call = {"withdraw": lambda: AR.withdraw(self.vre_settings, self.actor(), rid),
                "approve": lambda: AR.approve(self.vre_settings, self.actor(), rid, mode=f["mode"] or None,
                                              expires=f["expires"] or None),
                "deny": lambda: AR.deny(self.vre_settings, self.actor(), rid, f["reason"])}[action]
        try:
            await asyncio.to_thread(call)
        except Exception as e:  # a refusal; anything else is logged and answered with the form kept
            e = self.refusal(e)
            return await self.show(status_of(e), error={"id": rid, "action": action, "message": str(e)}, form=f)
        past = {"withdraw": "withdrawn", "approve": "approved", "deny": "denied"}[action]
        self.redirect(self.url("access-requests", done=past, id=rid), status=303)


def handlers(settings) -> list[tuple]:
    kw = {"vre_settings": settings}
    return [
        (r"catalogue/?", CataloguePage, kw),
        (r"access-requests/?", RequestsPage, kw),
        (r"access-requests/(\d+)/(withdraw|approve|deny)", RequestAction, kw),
    ]
