"""The Datasets admin page of the VRE service, VRE admins only (``custom:vre-admin``), plain HTML forms
XSRF-protected like the service's other pages:

* ``admin/datasets`` (GET): every dataset, the indexings running now, and the form that registers a
  directory on the hub's host (POST: checked at once, then indexed in the background);
* ``admin/datasets/<slug>`` (GET): one dataset: the last indexing's progress and report (files read
  so far, then the unreadable files and clinical side files), the catalogue record's form, re-index
  and retire; ``.../progress`` (GET): the indexing's state as JSON, which the page polls (without
  script, it refreshes itself);
* ``admin/datasets/<slug>/(edit|reindex|retire)`` (POST): one change.

Each change is ``vre.dataset_admin``'s (the CLI's too), so the same rules and the same audit event,
here naming the admin and their address (``via=web``). Indexing takes minutes for a large dataset,
so it runs in a thread of this process (``Runs``), one per dataset at a time, never on the tornado
loop. A refused form comes back as the page with the message saying what to fix (status 400, 403,
404 or 409), never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable

from tornado.log import app_log

from .. import dataset_admin
from ..catalog import cluster, registry
from ..catalog.metadata import CATALOG_FIELDS, EUCAIM_TIERS
from ..errors import Conflict, VREError
from ..roles import ADMIN_SCOPE
from .base import ServiceAPIHandler, requires_scope
from .forms import FormPage, status_of

#: How many datasets are indexed at once (each indexing uses worker processes of its own).
PARALLEL = 2


@dataclass
class Run:
    """One indexing (``register`` or ``reindex``) of one dataset, as the page shows it."""

    slug: str
    kind: str
    by: str
    state: str = "running"     # running, done, failed
    done: int = 0              # headers read so far ...
    total: int | None = None   # ... of how many (None: the folder is still being listed)
    report: dict | None = None
    error: str | None = None
    started: float = field(default_factory=time.time)

    def as_json(self) -> dict:
        return asdict(self)


def _report(report) -> dict:
    return {**asdict(report), "summary": report.summary()}


class Runs:
    """The indexings of this process: one per dataset at a time, in a small thread pool, with the
    last one of each dataset kept for its page (until the dataset is retired)."""

    def __init__(self, parallel: int = PARALLEL):
        self._pool = ThreadPoolExecutor(parallel, thread_name_prefix="vre-index")
        self._runs: dict[str, Run] = {}
        self._lock = threading.Lock()

    def get(self, slug: str) -> Run | None:
        return self._runs.get(slug)

    def all(self) -> list[Run]:
        return sorted(self._runs.values(), key=lambda r: r.started)

    def busy(self, slug: str) -> None:
        """Raise ``Conflict`` while ``slug`` is being indexed."""
        run = self._runs.get(slug)
        if run is not None and run.state == "running":
            raise Conflict(f"dataset {slug!r} is being indexed now ({run.kind}, started by {run.by}); "
                           "wait until it has finished")

    def start(self, slug: str, kind: str, by: str, work: Callable) -> Run:
        """Run ``work(progress)`` (returns an ``IndexReport``) in the background."""
        with self._lock:
            self.busy(slug)
            run = self._runs[slug] = Run(slug, kind, by)
        self._pool.submit(self._run, run, work)
        return run

    def forget(self, slug: str) -> None:
        with self._lock:
            self._runs.pop(slug, None)

    @staticmethod
    def _run(run: Run, work: Callable) -> None:
        def progress(done: int, total: int) -> None:
            run.done, run.total = done, total
        try:
            report = work(progress)
        except VREError as e:
            run.error, run.state = str(e), "failed"
        except Exception as e:  # the page says so; the log has the traceback
            app_log.exception("indexing dataset %s failed", run.slug)
            run.error, run.state = f"indexing failed: {type(e).__name__}: {e}; see the VRE service's log", "failed"
        else:
            run.report, run.state = _report(report), "done"


def _form_values(fields: dict) -> dict:
    """A record's catalogue fields as the form shows them (keywords comma-separated)."""
    values = {k: fields.get(k) for k in CATALOG_FIELDS}
    values["keywords"] = ", ".join(values["keywords"] or [])
    return {k: "" if v is None else str(v) for k, v in values.items()}


class _Page(FormPage):
    def initialize(self, runs: Runs, **kwargs):
        super().initialize(**kwargs)
        self.runs = runs

    def page(self, name: str, status: int = 200, **ns) -> None:
        super().page(name, status, datasets_url=self.url("admin/datasets"), fields=CATALOG_FIELDS,
                     tiers=EUCAIM_TIERS, **ns)


class DatasetsPage(_Page):
    """``GET admin/datasets``: the list and the registration form; ``POST``: register."""

    async def show(self, status: int = 200, **ns) -> None:
        datasets = await asyncio.to_thread(dataset_admin.list_datasets, self.vre_settings)
        known = {d["slug"] for d in datasets}
        # registrations running or failed here: not in the catalogue (yet)
        pending = [r for r in self.runs.all() if r.slug not in known and r.kind == "register"]
        retired = self.get_query_argument("retired", "")
        ns.setdefault("form", {})
        self.page("admin-datasets.html", status, datasets=datasets, pending=pending,
                  source=registry.source_kind(self.vre_settings),
                  catalog_namespace=cluster.namespace(self.vre_settings),
                  retired=retired if retired and retired not in known else "", **ns)

    @requires_scope(ADMIN_SCOPE)
    async def get(self):
        await self.show()

    @requires_scope(ADMIN_SCOPE)
    async def post(self):
        f = self.form("path", "slug", *CATALOG_FIELDS)
        slug, path, fields = f["slug"].strip(), f["path"].strip(), {k: f[k] for k in CATALOG_FIELDS}
        who = self.actor()
        try:
            source = registry.source_kind(self.vre_settings)
            if not os.path.isabs(path) and not (source == "claim" and not path):
                where = "on the NFS server" if source == "nfs" else "on the hub's host"
                raise VREError(f"give the folder's absolute path {where}, e.g. /srv/imaging/lung-ct (got {path!r})")
            self.runs.busy(slug)
            await asyncio.to_thread(dataset_admin.check_register, self.vre_settings, who, path, slug, fields)
            self.runs.start(slug, "register", who.name, lambda progress: dataset_admin.register(
                self.vre_settings, who, path, slug, fields, progress=progress)[1])
        except Exception as e:  # a refusal; anything else is logged and answered with the form kept
            e = self.refusal(e)
            return await self.show(status_of(e), error=str(e), form=f)
        self.redirect(self.url("admin/datasets", slug), status=303)


class DatasetPage(_Page):
    """``GET admin/datasets/<slug>``: one dataset, its last indexing, its forms."""

    async def show(self, slug: str, status: int = 200, **ns) -> None:
        run = self.runs.get(slug)
        try:
            dataset = await asyncio.to_thread(dataset_admin.describe, self.vre_settings, slug)
        except VREError as e:
            if run is None:  # neither registered nor being registered here
                status, ns["error"] = status_of(e), {"change": "", "message": str(e)}
            dataset = None
        if dataset is not None and "form" not in ns:
            ns["form"] = _form_values(dataset["fields"])
        done = self.get_query_argument("done", "")
        self.page("admin-dataset.html", status, slug=slug, dataset=dataset, run=run,
                  dataset_url=self.url("admin/datasets", slug),
                  progress_url=self.url("admin/datasets", slug, "progress"),
                  done=done if done in ("saved", "unchanged", "reindexing") else "",
                  record_json=json.dumps(dataset["record"], indent=2, default=str) if dataset else "", **ns)

    @requires_scope(ADMIN_SCOPE)
    async def get(self, slug):
        await self.show(slug)


class DatasetProgress(ServiceAPIHandler):
    """``GET admin/datasets/<slug>/progress``: the last indexing as JSON (``{"state": "none"}``)."""

    def initialize(self, runs: Runs, **kwargs):
        super().initialize(**kwargs)
        self.runs = runs

    @requires_scope(ADMIN_SCOPE)
    async def get(self, slug):
        run = self.runs.get(slug)
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(run.as_json() if run else {"slug": slug, "state": "none"}, default=str))


class DatasetChange(DatasetPage):
    """``POST admin/datasets/<slug>/(edit|reindex|retire)``."""

    @requires_scope(ADMIN_SCOPE)
    async def post(self, slug, change):
        who, settings = self.actor(), self.vre_settings
        f = self.form(*CATALOG_FIELDS, "confirm")
        try:
            self.runs.busy(slug)
            if change == "edit":
                changed = await asyncio.to_thread(dataset_admin.update, settings, who, slug,
                                                  {k: f[k] for k in CATALOG_FIELDS})
                return self.redirect(self.url("admin/datasets", slug, done="saved" if changed else "unchanged"),
                                     status=303)
            if change == "reindex":
                await asyncio.to_thread(dataset_admin.check_reindex, settings, who, slug)
                self.runs.start(slug, "reindex", who.name,
                                lambda progress: dataset_admin.reindex(settings, who, slug, progress=progress))
                return self.redirect(self.url("admin/datasets", slug, done="reindexing"), status=303)
            if f["confirm"] != "yes":
                raise VREError(f"tick the box to confirm that {slug!r} leaves the catalogue")
            await asyncio.to_thread(dataset_admin.remove, settings, who, slug)
            self.runs.forget(slug)
            return self.redirect(self.url("admin/datasets", retired=slug), status=303)
        except Exception as e:  # a refusal; anything else is logged and answered with the form kept
            e = self.refusal(e)
            form = {k: f[k] for k in CATALOG_FIELDS} if change == "edit" else {}
            return await self.show(slug, status_of(e), error={"change": change, "message": str(e)},
                                   **({"form": form} if form else {}))


def handlers(settings) -> list[tuple]:
    kw = {"vre_settings": settings, "runs": Runs()}
    slug = r"([a-z][a-z0-9-]*)"
    return [
        (r"admin/datasets/?", DatasetsPage, kw),
        (rf"admin/datasets/{slug}/?", DatasetPage, kw),
        (rf"admin/datasets/{slug}/progress", DatasetProgress, kw),
        (rf"admin/datasets/{slug}/(edit|reindex|retire)", DatasetChange, kw),
    ]
