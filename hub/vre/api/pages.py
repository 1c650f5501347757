"""HTML pages of the VRE service, rendered with the hub's own page template (``page.html``: the same
navigation bar, styles and scripts, linked from the hub's static files), so that they look like the
hub's pages although another process serves them."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from http.client import responses
from pathlib import Path

from jinja2 import ChoiceLoader, Environment, FileSystemLoader
from jupyterhub._data import DATA_FILES_PATH
from jupyterhub.utils import url_path_join
from tornado import web

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@lru_cache(maxsize=1)
def environment() -> Environment:
    """The VRE's templates first, then the hub's (``page.html``, ``error.html``)."""
    return Environment(loader=ChoiceLoader([FileSystemLoader(str(TEMPLATES)),
                                            FileSystemLoader(os.path.join(DATA_FILES_PATH, "templates"))]),
                       autoescape=True)


class _PageUser:
    """What ``page.html`` reads of the user."""

    def __init__(self, model: dict):
        self.name = model["name"]
        self.json_escaped_name = json.dumps(self.name)[1:-1]


def namespace(handler) -> dict:
    """The hub's template namespace (``BaseHandler.template_namespace``), as far as a service knows it."""
    base = os.environ.get("JUPYTERHUB_BASE_URL", "/")
    hub = url_path_join(base, "hub/")
    who = getattr(handler, "_hub_auth_user_cache", None)  # the caller, if known (also on error pages)
    return dict(
        base_url=hub,
        prefix=base,
        user=_PageUser(who) if who else None,
        login_url=url_path_join(hub, "login"),
        logout_url=url_path_join(hub, "logout"),
        static_url=lambda path, include_version=True: url_path_join(hub, "static", path),
        version_hash="",
        services=[],
        parsed_scopes={},
        expanded_scopes=set(),
        no_spawner_check=True,
        xsrf_token=handler.xsrf_token.decode("ascii") if who else "",
        announcement=None,
    )


def render(handler, name: str, **ns) -> str:
    return environment().get_template(name).render(**{**namespace(handler), **ns})


def render_error(handler, status_code: int, exc_info) -> str:
    exception = exc_info[1] if exc_info else None
    message = exception.get_message() if isinstance(exception, web.HTTPError) else ""
    handler.set_header("Content-Type", "text/html; charset=utf-8")
    return render(handler, "error.html", status_code=status_code,
                  status_message=responses.get(status_code, "Unknown HTTP Error"), message=message,
                  message_html="", extra_error_html="", exception=exception)
