"""The Users admin page of the VRE service, VRE admins only (``custom:vre-admin``), plain HTML forms
XSRF-protected like the service's other pages (``vre.api.access_pages``):

* ``admin/users`` (GET): every account with its role, disabled, a running lockout, second factor;
  the sessions running now (from the hub's API with the service's own token; "unknown" when the
  hub does not answer) with their CPU, memory (``vre.resource_use``) and GPUs; the batch queue's
  queued and running jobs (``vre.admin_running``);
* ``admin/users/new`` (POST): create an account, its generated password shown once in the answer;
* ``admin/users/<name>/(disable|enable|unlock|reset-mfa)`` (POST): one change;
* ``admin/users/<name>/role`` (POST): role and output-checker flag;
* ``admin/sessions/<user>/<server>/stop`` and ``admin/jobs/<id>/cancel`` (POST).

Each is the CLI's function (``vre user add|disable|unlock|reset-mfa|set-role|set-checker``,
``vre jobs cancel``: ``vre.admin``, ``vre.admin_running``), so the same rules and the same audit
event, here naming the admin and their address (``via=web``). A refused form comes back as the
page with the message saying what to fix (status 400, 403, 404 or 409), never a traceback.
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from jupyterhub.httpclient import fetch
from jupyterhub.utils import url_path_join

from .. import admin, admin_running, resource_use
from ..db import ROLES
from ..errors import NotFound, VREError
from ..roles import ADMIN_SCOPE
from .base import requires_scope
from .forms import FormPage, status_of

_PAGE = 200  # the hub's largest page of users
_API_TIMEOUT = 10  # seconds: a slow hub makes the column "unknown", not the page wait
#: What the page says after each change (the redirect names the change; the page words it).
DONE = {"disable": "disabled: logins and new sessions are refused", "enable": "enabled", "unlock": "unlocked",
        "reset-mfa": "second factor removed: a new one is set up at the next login",
        "role": "role changed (the VRE applies it at once, the hub's rights at their next login)",
        "stop": "stop requested: the session ends within seconds", "cancel": "cancelled (a running job stops "
        "within seconds)"}


class UsersPage(FormPage):
    """``GET admin/users``."""

    async def hub_servers(self) -> list[tuple[str, str, dict]] | None:
        """``(user, server name, server model)`` of every session running or starting now, None if
        the hub's API does not answer (the page then says "unknown" rather than "none")."""
        found, offset = [], 0
        try:
            while True:
                url = url_path_join(self.hub_auth.api_url, "users") + f"?state=active&offset={offset}&limit={_PAGE}"
                # HubAuth's own request method: it knows how to reach the hub (its unix socket
                # here); JupyterHub has no public one. A change there makes the column "unknown".
                data = await asyncio.wait_for(self.hub_auth._api_request(
                    "GET", url, headers={"Accept": "application/jupyterhub-pagination+json"}), _API_TIMEOUT)
                for user in data["items"]:
                    found += [(user["name"], name, model) for name, model in (user.get("servers") or {}).items()]
                if not data["_pagination"].get("next"):
                    return sorted(found, key=lambda s: s[:2])
                offset = data["_pagination"]["next"]["offset"]
        except Exception as e:  # the page still serves its purpose without it
            self.log.warning("could not list running sessions from the hub: %s", e)
            return None

    async def show(self, status: int = 200, **ns) -> None:
        servers = await self.hub_servers()
        running, sessions = None, []
        if servers is not None:
            running = running_by_user(servers)
            keys = [(user, name) for user, name, _ in servers]
            use, gpus = await asyncio.gather(
                asyncio.to_thread(resource_use.sessions_use, self.vre_settings, running),
                asyncio.to_thread(resource_use.session_gpus, self.vre_settings, keys))
            sessions = [{"user": user, "server": name, "profile": profile_of(model),
                         "state": "stopping" if model.get("pending") == "stop" else
                                  "starting" if model.get("pending") else "running",
                         "use": use[(user, name)], "gpus": gpus[(user, name)]}
                        for user, name, model in servers]
        accounts, jobs = await asyncio.gather(asyncio.to_thread(admin.list_accounts, self.vre_settings),
                                              asyncio.to_thread(admin_running.open_jobs, self.vre_settings))
        self.page("admin-users.html", status, accounts=accounts, running=running, sessions=sessions, jobs=jobs,
                  roles=ROLES, users_url=self.url("admin/users"), admin_url=self.url("admin"),
                  me=self.current_user.name, done=self.done(), **ns)

    def done(self) -> dict | None:
        """The change just made (after the redirect): named by the URL, worded by the page only."""
        change = self.get_query_argument("done", "")
        return {"message": DONE[change], "name": self.get_query_argument("user", "")} if change in DONE else None

    @requires_scope(ADMIN_SCOPE)
    async def get(self):
        await self.show()

    async def act(self, subject: str, done: str, call, *args, **kw):
        """Run ``call`` (a shared function, in a thread); back to the page with what was done, or
        the page again with the refusal."""
        try:
            await asyncio.to_thread(call, self.vre_settings, self.actor(), *args, **kw)
        except Exception as e:  # a refusal; anything else is logged and answered with the form kept
            e = self.refusal(e)
            return await self.show(status_of(e), error={"name": subject, "message": str(e)})
        self.redirect(self.url("admin/users", done=done, user=subject), status=303)


def profile_of(model: dict) -> str | None:
    """The profile a server was started with (the spawn form sends a list of one)."""
    profile = (model.get("user_options") or {}).get("profile")
    return (profile[0] if profile else None) if isinstance(profile, list) else profile


def running_by_user(servers) -> dict[str, list[str]]:
    """``user -> their server names`` (the default server's is "")."""
    found: dict[str, list[str]] = {}
    for user, name, _ in servers:
        found.setdefault(user, []).append(name)
    return found


class UserChange(UsersPage):
    """``POST admin/users/<name>/<change>``."""

    @requires_scope(ADMIN_SCOPE)
    async def post(self, name, change):
        await self.act(name, change, admin.change_account, name, change)


class RoleChange(UsersPage):
    """``POST admin/users/<name>/role``: fields ``role``, ``checker`` (a checkbox)."""

    @requires_scope(ADMIN_SCOPE)
    async def post(self, name):
        form = self.form("role", "checker")
        await self.act(name, "role", admin.set_role, name, form["role"] or None, checker=form["checker"] == "on")


class AccountCreate(UsersPage):
    """``POST admin/users/new``: fields ``name``, ``role``, ``login`` (``password`` or ``oidc``). The
    answer is the page with the generated password, once: never in a URL, never stored."""

    @requires_scope(ADMIN_SCOPE)
    async def post(self):
        form = self.form("name", "role", "login")
        if form["login"] not in ("password", "oidc"):
            return await self.show(400, error={"name": form["name"], "message": "choose how the account logs in: "
                                                                                "a local password or single sign-on"})
        try:
            said, password = await asyncio.to_thread(admin.create_account, self.vre_settings, self.actor(),
                                                     form["name"], form["role"], oidc=form["login"] == "oidc")
        except Exception as e:  # a refusal; anything else is logged and answered with the form kept
            e = self.refusal(e)
            return await self.show(status_of(e), error={"name": form["name"], "message": str(e)}, form=form)
        await self.show(created={"name": form["name"].strip().lower(), "said": said, "password": password})


class SessionStop(UsersPage):
    """``POST admin/sessions/<user>/<server>/stop``: the hub stops it (``DELETE`` on its API with
    the service's token, which holds ``delete:servers`` for this: ``vre.roles.SERVICE_SCOPES``)."""

    @requires_scope(ADMIN_SCOPE)
    async def post(self, user, server):
        subject = f"{user}/{server}"
        try:
            await asyncio.to_thread(admin_running.check_session_stop, self.vre_settings, self.actor(), user, server)
            await self.stop_server(user, server)
        except Exception as e:  # a refusal; anything else is logged and answered with the form kept
            e = self.refusal(e)
            return await self.show(status_of(e), error={"name": subject, "message": str(e)})
        await asyncio.to_thread(admin_running.record_session_stop, self.vre_settings, self.actor(), user, server)
        self.redirect(self.url("admin/users", done="stop", user=subject), status=303)

    async def stop_server(self, user: str, server: str) -> None:
        url = url_path_join(self.hub_auth.api_url, "users", quote(user, safe=""), "servers", quote(server, safe=""))
        try:
            r = await asyncio.wait_for(fetch(url, method="DELETE", raise_for_status=False, headers={
                "Authorization": f"token {self.hub_auth.api_token}"}), _API_TIMEOUT)
        except Exception as e:
            self.log.warning("could not ask the hub to stop %s/%s: %s", user, server, e)
            raise VREError("the hub did not answer; try again in a moment") from None
        if r.status == 404:
            raise NotFound(f"{user!r} has no session {server!r} running (it may have stopped already)")
        if r.status >= 400:
            self.log.warning("the hub refused to stop %s/%s: %s %s", user, server, r.status, await r.text())
            raise VREError(f"the hub refused to stop the session (status {r.status}); see the service's log")


class JobCancel(UsersPage):
    """``POST admin/jobs/<id>/cancel``."""

    @requires_scope(ADMIN_SCOPE)
    async def post(self, job_id):
        await self.act(f"job {job_id}", "cancel", admin_running.cancel_job, int(job_id))


def handlers(settings) -> list[tuple]:
    kw = {"vre_settings": settings}
    changes = "|".join(admin.CHANGES)
    return [
        (r"admin/users/?", UsersPage, kw),
        (r"admin/users/new", AccountCreate, kw),
        (rf"admin/users/([^/]+)/({changes})", UserChange, kw),
        (r"admin/users/([^/]+)/role", RoleChange, kw),
        (r"admin/sessions/([^/]+)/([^/]+)/stop", SessionStop, kw),
        (r"admin/jobs/([0-9]+)/cancel", JobCancel, kw),
    ]
