"""The Projects admin page of the VRE service, VRE admins only (``custom:vre-admin``), plain HTML
forms XSRF-protected like the service's other pages:

* ``admin/projects`` (GET): every project; (POST) create one (slug, title, description, permit expiry);
* ``admin/projects/<slug>`` (GET): one project with a form per change: permit expiry, members, dataset
  grants (mode, expiry; the datasets offered are the registered ones), resource profiles, batch quota,
  cell audit, downloads, egress cap and the airlock's reviewer count;
* ``admin/projects/<slug>/<change>`` (POST): one change (``CHANGES``).

Each change is ``vre.project_admin``'s (the CLI's ``vre project ...`` too), so the same rules and the
same audit event, here naming the admin and their address (``via=web``). A refused form comes back
as the page with the message next to the form, the values typed kept (status 400, 403 or 404),
never a traceback.
"""

from __future__ import annotations

import asyncio

from .. import project_admin as PA
from ..access.policy import DOWNLOAD_MODES
from ..db import GRANT_MODES
from ..errors import NotFound, VREError
from ..roles import ADMIN_SCOPE
from .base import requires_scope
from .forms import FormPage, status_of

def _selector(text: str) -> list[str]:
    """'a=b, c=d' (the form's node selector) -> the CLI's ``--node-selector`` items."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _onoff(value: str) -> bool:
    if value not in ("on", "off"):
        raise VREError(f"cell audit must be on or off, not {value!r}")
    return value == "on"


def _profile(settings, who, project: str, f: dict) -> str:
    return PA.set_profile(settings, who, project, f["name"].strip(), cpu=PA.number(f["cpu"], "CPU", required=True),
                          memory=f["memory"], gpus=PA.number(f["gpus"], "GPUs", int) or 0,
                          gpu_shared=bool(f["gpu_shared"]), description=f["description"].strip(),
                          node_selector=_selector(f["node_selector"]))


#: change: (the form's fields, what it does: (settings, actor, project slug, fields)).
CHANGES = {
    "set-expiry": (("expires",), lambda s, w, p, f: PA.set_expiry(s, w, p, f["expires"])),
    "add-member": (("user",), lambda s, w, p, f: PA.add_member(s, w, p, f["user"].strip())),
    "remove-member": (("user",), lambda s, w, p, f: PA.remove_member(s, w, p, f["user"])),
    "grant": (("dataset", "mode", "expires"), lambda s, w, p, f: PA.grant(
        s, w, p, f["dataset"], mode=f["mode"] or "interactive", expires=f["expires"].strip() or None)),
    "update-grant": (("dataset", "mode", "expires"), lambda s, w, p, f: PA.update_grant(
        s, w, p, f["dataset"], mode=f["mode"] or None, expires=f["expires"].strip() or None)),
    "revoke": (("dataset",), lambda s, w, p, f: PA.revoke(s, w, p, f["dataset"])),
    "set-profile": (("name", "cpu", "memory", "gpus", "gpu_shared", "description", "node_selector"), _profile),
    "remove-profile": (("name",), lambda s, w, p, f: PA.remove_profile(s, w, p, f["name"])),
    "set-quota": (("jobs", "cpu", "memory", "gpus"), lambda s, w, p, f: PA.set_quota(
        s, w, p, jobs=PA.number(f["jobs"], "jobs at once", int), cpu=PA.number(f["cpu"], "CPU"),
        memory=f["memory"].strip() or None, gpus=PA.number(f["gpus"], "GPUs", int))),
    "set-cell-audit": (("state",), lambda s, w, p, f: PA.set_cell_audit(s, w, p, _onoff(f["state"]))),
    "set-downloads": (("mode",), lambda s, w, p, f: PA.set_downloads(s, w, p, f["mode"])),
    "set-egress-cap": (("cap",), lambda s, w, p, f: PA.set_egress_cap(s, w, p, f["cap"])),
    "set-airlock-reviews": (("reviews",), lambda s, w, p, f: PA.set_airlock_rules(
        s, w, p, reviews=PA.number(f["reviews"], "reviews per request", int, required=True))),
}


class _Page(FormPage):
    def page(self, name: str, status: int = 200, **ns) -> None:
        super().page(name, status, projects_url=self.url("admin/projects"), modes=list(GRANT_MODES),
                     downloads=DOWNLOAD_MODES, **ns)


class ProjectsPage(_Page):
    """``GET admin/projects``: the list; ``POST admin/projects``: create one."""

    async def show(self, status: int = 200, **ns) -> None:
        projects = await asyncio.to_thread(PA.list_projects, self.vre_settings)
        self.page("admin-projects.html", status, projects=projects, **ns)

    @requires_scope(ADMIN_SCOPE)
    async def get(self):
        await self.show()

    @requires_scope(ADMIN_SCOPE)
    async def post(self):
        f = self.form("slug", "title", "description", "expires")
        try:
            await asyncio.to_thread(PA.create, self.vre_settings, self.actor(), f["slug"].strip(), f["title"],
                                    f["description"].strip(), f["expires"].strip() or None)
        except Exception as e:  # a refusal; anything else is logged and answered with the form kept
            e = self.refusal(e)
            return await self.show(status_of(e), error=str(e), form=f)
        self.redirect(self.url("admin/projects", f["slug"].strip(), done="create"), status=303)


class ProjectPage(_Page):
    """``GET admin/projects/<slug>``."""

    async def show(self, slug: str, status: int = 200, **ns) -> None:
        try:
            project = await asyncio.to_thread(PA.project_details, self.vre_settings, slug)
        except NotFound as e:
            projects = await asyncio.to_thread(PA.list_projects, self.vre_settings)
            return self.page("admin-projects.html", 404, projects=projects, error=str(e), form={})
        done = self.get_query_argument("done", "")
        self.page("admin-project.html", status, project=project, project_url=self.url("admin/projects", slug),
                  done=done if done in CHANGES or done == "create" else "", **ns)

    @requires_scope(ADMIN_SCOPE)
    async def get(self, slug):
        await self.show(slug)


class ProjectChange(ProjectPage):
    """``POST admin/projects/<slug>/<change>``."""

    @requires_scope(ADMIN_SCOPE)
    async def post(self, slug, change):
        fields, apply = CHANGES[change]
        f = self.form(*fields)
        try:
            await asyncio.to_thread(apply, self.vre_settings, self.actor(), slug, f)
        except Exception as e:  # a refusal; anything else is logged and answered with the form kept
            e = self.refusal(e)
            return await self.show(slug, status_of(e), error={"change": change, "message": str(e)}, form=f)
        self.redirect(self.url("admin/projects", slug, done=change), status=303)


def handlers(settings) -> list[tuple]:
    kw = {"vre_settings": settings}
    changes = "|".join(CHANGES)
    return [
        (r"admin/projects/?", ProjectsPage, kw),
        (r"admin/projects/([^/]+)/?", ProjectPage, kw),
        (rf"admin/projects/([^/]+)/({changes})", ProjectChange, kw),
    ]
