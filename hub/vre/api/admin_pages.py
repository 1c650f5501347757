"""The Users admin page of the VRE service, VRE admins only (``custom:vre-admin``), plain HTML forms
XSRF-protected like the service's other pages (``vre.api.access_pages``):

* ``admin/users`` (GET): every account with its role, disabled, a running lockout, second factor,
  and the sessions running now (from the hub's API with the service's own read-only token;
  "unknown" when the hub does not answer);
* ``admin/users/<name>/(disable|enable|unlock|reset-mfa)`` (POST): one change.

Each change is ``vre.admin.change_account`` (the CLI's too), so the same rules and the same audit
event, here naming the admin and their address (``via=web``). A refused form comes back as the
page with the message saying what to fix (status 400, 403 or 404), never a traceback.
"""

from __future__ import annotations

import asyncio

from jupyterhub.utils import url_path_join

from .. import admin
from ..errors import VREError
from ..roles import ADMIN_SCOPE
from .base import requires_scope
from .forms import FormPage, status_of

_PAGE = 200  # the hub's largest page of users
_API_TIMEOUT = 10  # seconds: a slow hub makes the column "unknown", not the page wait


class UsersPage(FormPage):
    """``GET admin/users``."""

    async def running(self) -> dict[str, list[str]] | None:
        """Who has sessions running or starting now (name: server names), None if the hub's API
        does not answer (the page then says "unknown" rather than "none")."""
        found, offset = {}, 0
        try:
            while True:
                url = url_path_join(self.hub_auth.api_url, "users") + f"?state=active&offset={offset}&limit={_PAGE}"
                # HubAuth's own request method: it knows how to reach the hub (its unix socket
                # here); JupyterHub has no public one. A change there makes the column "unknown".
                data = await asyncio.wait_for(self.hub_auth._api_request(
                    "GET", url, headers={"Accept": "application/jupyterhub-pagination+json"}), _API_TIMEOUT)
                for user in data["items"]:
                    found[user["name"]] = sorted(name or "(default)" for name in (user.get("servers") or {}))
                if not data["_pagination"].get("next"):
                    return found
                offset = data["_pagination"]["next"]["offset"]
        except Exception as e:  # the page still serves its purpose without it
            self.log.warning("could not list running sessions from the hub: %s", e)
            return None

    async def show(self, status: int = 200, **ns) -> None:
        accounts = await asyncio.to_thread(admin.list_accounts, self.vre_settings)
        running = await self.running()
        self.page("admin-users.html", status, accounts=accounts, running=running, users_url=self.url("admin/users"),
                  me=self.current_user.name, done=self.done(), **ns)

    def done(self) -> dict | None:
        """The change just made (after the redirect): named by the URL, worded by the page only."""
        change = self.get_query_argument("done", "")
        return {"change": change, "name": self.get_query_argument("user", "")} if change in admin.CHANGES else None

    @requires_scope(ADMIN_SCOPE)
    async def get(self):
        await self.show()


class UserChange(UsersPage):
    """``POST admin/users/<name>/<change>``."""

    @requires_scope(ADMIN_SCOPE)
    async def post(self, name, change):
        try:
            await asyncio.to_thread(admin.change_account, self.vre_settings, self.actor(), name, change)
        except VREError as e:
            return await self.show(status_of(e), error={"name": name, "message": str(e)})
        self.redirect(self.url("admin/users", done=change, user=name), status=303)


def handlers(settings) -> list[tuple]:
    kw = {"vre_settings": settings}
    changes = "|".join(admin.CHANGES)
    return [
        (r"admin/users/?", UsersPage, kw),
        (rf"admin/users/([^/]+)/({changes})", UserChange, kw),
    ]
