"""What the hub's own pages show: the user's projects on the home page and the spawn form."""

from __future__ import annotations

from html import escape

from . import db as vdb
from .accounts import get_account
from .errors import VREError
from .settings import Settings


def _dataset_summary(dataset: vdb.Dataset) -> dict:
    cat = dataset.catalog or {}
    return {
        "slug": dataset.slug, "title": dataset.title,
        "modalities": ", ".join(cat.get("modalities", [])),
        "body_parts": ", ".join(cat.get("body_parts", [])),
        "subjects": cat.get("num_subjects"), "studies": cat.get("num_studies"),
        "condition": cat.get("condition", ""), "terms": cat.get("access_rights", ""),
    }


def _grant_summary(g: vdb.Grant) -> dict:
    """A granted dataset with how it may be used: batch-only and expired grants say so."""
    return {**_dataset_summary(g.dataset), "mode": g.mode, "expired": g.is_expired(),
            "until": g.expires_at.strftime("%Y-%m-%d %H:%M UTC") if g.expires_at else None}


def home_projects(settings: Settings, username: str) -> list[dict]:
    """The projects ``username`` belongs to, with their datasets and profiles, for the home page."""
    with vdb.session_scope(settings.vre_db_url) as db:
        try:
            account = get_account(db, username)
        except VREError:
            return []
        projects = sorted((m.project for m in account.memberships), key=lambda p: p.slug)
        return [{
            "slug": p.slug, "title": p.title, "description": p.description,
            "expires_at": p.expires_at.strftime("%Y-%m-%d %H:%M UTC") if p.expires_at else None,
            "expired": p.is_expired(),
            "audit_cells": p.audit_cells,
            "datasets": [_grant_summary(g) for g in sorted(p.grants, key=lambda g: g.dataset.slug)],
            "profiles": [{"name": pr.name, "text": pr.describe(), "description": pr.description}
                         for pr in p.profiles],
        } for p in projects]


def spawn_form(settings: Settings, username: str, project_slug: str, hub_base: str = "/hub/") -> str:
    """Radio buttons for the project's profiles; nothing for projects the user is not in."""
    if not project_slug:  # JupyterHub's unnamed default server: there is no such thing in the VRE
        return ('<p class="alert alert-info">Sessions are started per project: pick one on the '
                f'<a href="{escape(hub_base)}home">home page</a>.</p>')
    project = next((p for p in home_projects(settings, username) if p["slug"] == project_slug), None)
    if project is None:
        return ('<p class="alert alert-danger">Sessions are started per project, and you are not a member '
                f'of a project named "{escape(project_slug)}". Go back to the home page to pick one.</p>')
    if not project["profiles"]:
        return f'<p class="alert alert-warning">Project {escape(project["title"])} has no resource profile yet.</p>'
    rows = []
    for i, prof in enumerate(project["profiles"]):
        checked = " checked" if i == 0 else ""
        rows.append(
            f'<div class="form-check"><input class="form-check-input" type="radio" name="profile" '
            f'id="profile-{escape(prof["name"])}" value="{escape(prof["name"])}"{checked}>'
            f'<label class="form-check-label" for="profile-{escape(prof["name"])}"><b>{escape(prof["name"])}</b>: '
            f'{escape(prof["text"])} {escape(prof["description"])}</label></div>'
        )
    datasets = ", ".join(escape(d["title"]) for d in project["datasets"]) or "none yet"
    notice = ('<p class="alert alert-warning" id="vre-cell-audit">Code audit is on for this project: '
              'the code of every cell you run is recorded in the audit trail.</p>' if project["audit_cells"] else "")
    return (f'<h4>{escape(project["title"])}</h4>{notice}<p>Datasets (read-only under /data): {datasets}</p>'
            f'<fieldset><legend>Resource profile</legend>{"".join(rows)}</fieldset>')
