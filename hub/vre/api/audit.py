"""The auditor's side of the audit trail: a page and a REST API in the VRE service.

Routes (in the VRE service, ``vre.api.service``, so ``/services/vre/...``):

* ``GET  /services/vre/audit``                   the auditor page (HTML; login through the hub's OAuth)
* ``GET  /services/vre/api/audit/events``        ``{"events": [...], "total": n}``, newest first
* ``GET  /services/vre/api/audit/export``        a JSONL or CSV download of the filtered events (streamed)
* ``POST /services/vre/api/audit/verify``        the store's integrity report
* ``GET  /services/vre/api/audit/timeline``      events per dataset and day/hour

Every route needs the scope ``custom:vre-audit:read``, which the ``vre-auditor`` role carries (held by
accounts with the VRE role ``auditor``; see ``vre.auth`` and ``vre.roles``), in the caller's token: the
browser's login token (the service's OAuth client may be granted the scope) or an API token. JupyterHub's built-in ``admin`` role does not
include custom scopes, so admins get 403 like researchers: reading the trail is the auditor's job.
Caveat: the separation is not hard against a JupyterHub admin, who can mint an API token for the
auditor account (``tokens`` scope) or add itself to the auditors' group (``admin:groups``; JupyterHub
6.1 allows it even with ``manage_groups``). Both requests are recorded (``token.create`` /
``api.request``); closing them needs a narrower admin role in the hub configuration.

Exports and verifications made here are recorded in the trail (``audit.export``, ``audit.verify``,
actor = the auditor). An export is refused when it cannot be recorded (fail closed); a verification
is read-only, so its report is still returned, flagged ``"recorded": false``.

Blocking store calls run in worker threads, never on the service's event loop.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from datetime import date, datetime, timedelta, timezone
from typing import Any

from jupyterhub.utils import url_path_join
from tornado import web
from tornado.iostream import StreamClosedError

from ..audit import ACTIONS, OUTCOMES, SOURCES, AuditError, open_store
from ..audit.events import aemit
from ..roles import AUDIT_READ_SCOPE
from ..settings import Settings
from .base import ServiceAPIHandler, ServiceHandler, requires_scope
from .pages import render

#: Filter parameters taken from the query string, passed to the store as they are (after checks).
TEXT_FILTERS = ("user", "project", "dataset", "action", "session", "text")
MAX_FILTER_LENGTH = 256
MAX_LIMIT = 1000
DEFAULT_LIMIT = 50
BUCKETS = ("day", "hour")
FORMATS = {"jsonl": "application/x-ndjson; charset=utf-8", "csv": "text/csv; charset=utf-8"}
EXPORT_CHUNK = 64 * 1024       # bytes handed to the network at a time
EXPORT_QUEUE = 16              # chunks in flight between the export thread and the connection
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


class FilterError(ValueError):
    """A query parameter has a value the audit API cannot use; the message says which and why."""


# --- the scope check ---------------------------------------------------------------------------
requires_audit_scope = requires_scope(AUDIT_READ_SCOPE)


# --- the store -----------------------------------------------------------------------------------
def _store(settings: Settings):
    return open_store(settings)


def outcomes() -> tuple[str, ...]:
    return tuple(OUTCOMES)


def sources() -> tuple[str, ...]:
    return tuple(SOURCES)


def action_catalogue() -> tuple[list[tuple[str, str]], list[str]]:
    """([(action, description)], prefixes) for the page's action filter: the catalogue and its
    families ("session.")."""
    catalogue = ACTIONS
    actions = sorted(catalogue.items())
    prefixes = sorted({a.split(".", 1)[0] + "." for a in catalogue if "." in a})
    return actions, prefixes


async def in_thread(func, *args, **kwargs):
    """Run a blocking store call in a worker thread; the store's AuditError (a bad filter) is a 400."""
    try:
        return await asyncio.to_thread(func, *args, **kwargs)
    except AuditError as e:
        raise web.HTTPError(400, str(e)) from None


# --- query parameters ----------------------------------------------------------------------------
def parse_time(name: str, raw: str, *, end: bool = False) -> datetime:
    """An ISO 8601 date or date-time; naive values are UTC. ``since`` is inclusive, ``until``
    exclusive; a bare date as ``until`` means up to the end of that day."""
    value = raw.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            d = date.fromisoformat(value)
            start = datetime(d.year, d.month, d.day, tzinfo=timezone.utc)
            return start + timedelta(days=1) if end else start
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except (ValueError, OverflowError):
        raise FilterError(f"{name}: {raw!r} is not an ISO 8601 date or date-time "
                          "(e.g. 2026-11-22 or 2026-11-22T14:30:00Z)") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def parse_int(name: str, raw: str | None, default: int, lo: int, hi: int | None = None) -> int:
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise FilterError(f"{name}: {raw!r} is not a whole number") from None
    if value < lo or (hi is not None and value > hi):
        raise FilterError(f"{name} must be between {lo} and {hi}" if hi is not None else f"{name} must be >= {lo}")
    return value


def parse_filters(arg) -> dict[str, Any]:
    """The store filters from the query string (``arg(name) -> str | None``); empty values are ignored.

    ``since``/``until`` (aliases ``from``/``to``) are ISO 8601; ``outcome`` and ``source`` one of the
    known values.
    """
    filters: dict[str, Any] = {}
    for name in TEXT_FILTERS:
        value = arg(name)
        if value is None or not value.strip():
            continue
        value = value.strip()
        if len(value) > MAX_FILTER_LENGTH:
            raise FilterError(f"{name}: longer than {MAX_FILTER_LENGTH} characters")
        if any(ord(ch) < 32 for ch in value):
            raise FilterError(f"{name}: control characters are not allowed")
        filters[name] = value
    for name, known in (("outcome", outcomes()), ("source", sources())):
        value = (arg(name) or "").strip()
        if value:
            if value not in known:
                raise FilterError(f"{name}: {value!r} is not one of {', '.join(known)}")
            filters[name] = value
    for name, alias, end in (("since", "from", False), ("until", "to", True)):
        raw = arg(name) or arg(alias)
        if raw and raw.strip():
            filters[name] = parse_time(name, raw, end=end)
    if "since" in filters and "until" in filters and filters["since"] > filters["until"]:
        raise FilterError("since is later than until")
    return filters


def describe_filters(filters: dict[str, Any]) -> dict[str, str]:
    """The filters as plain strings (for audit event details and file names)."""
    return {k: (v.isoformat() if isinstance(v, datetime) else str(v)) for k, v in filters.items()}


def _json_default(value):
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    if hasattr(value, "_asdict"):
        return value._asdict()
    if hasattr(value, "__dict__"):
        return {k: v for k, v in vars(value).items() if not k.startswith("_")}
    return str(value)


def to_json(value) -> str:
    return json.dumps(value, default=_json_default)


def report_dict(report) -> dict:
    """The store's VerifyReport as JSON-able dict."""
    if hasattr(report, "to_dict"):
        data = report.to_dict()
    elif isinstance(report, dict):
        data = dict(report)
    elif hasattr(report, "_asdict"):
        data = report._asdict()
    elif hasattr(report, "__dataclass_fields__"):
        import dataclasses

        data = dataclasses.asdict(report)
    else:
        data = {k: getattr(report, k) for k in ("ok", "length", "last_checkpoint", "problem", "seq",
                                                "detail", "unsealed") if hasattr(report, k)}
    return json.loads(to_json(data))


# --- handlers ------------------------------------------------------------------------------------
class _VREMixin:
    """Query parameters and the auditor's own events (``self.vre_settings``: see ``ServiceHandler``)."""

    def _audit_arg(self, name: str) -> str | None:
        return self.get_query_argument(name, None)

    def _audit_filters(self) -> dict[str, Any]:
        try:
            return parse_filters(self._audit_arg)
        except FilterError as e:
            raise web.HTTPError(400, str(e)) from None

    def _audit_int(self, name: str, default: int, lo: int, hi: int | None = None) -> int:
        try:
            return parse_int(name, self._audit_arg(name), default, lo, hi)
        except FilterError as e:
            raise web.HTTPError(400, str(e)) from None

    def _audit_choice(self, name: str, default: str, allowed) -> str:
        value = (self._audit_arg(name) or default).strip()
        if value not in allowed:
            raise web.HTTPError(400, f"{name}: {value!r} is not one of {', '.join(allowed)}")
        return value

    async def _audit_record(self, action: str, *, outcome: str = "ok", details: dict) -> None:
        """Record what the auditor did through this API in the trail itself."""
        who = self.current_user  # a user with the vre-auditor role, or a service granted the scope
        role = "service" if who.kind == "service" else "auditor"
        await aemit(self.vre_settings, action, actor=who.name, actor_role=role, outcome=outcome,
                    target="audit-trail", client=self.request.remote_ip, details=details)


class AuditPageHandler(_VREMixin, ServiceHandler):
    """``GET /services/vre/audit``: the auditor page; the data comes from the API below."""

    @requires_audit_scope
    async def get(self):
        actions, prefixes = action_catalogue()
        html = render(
            self, "audit.html",
            audit_actions=actions,
            audit_prefixes=prefixes,
            audit_outcomes=outcomes(),
            audit_sources=sources(),
            audit_api=url_path_join(self.hub_auth.base_url, "api/audit"),
            audit_page_size=DEFAULT_LIMIT,
        )
        self.finish(html)


class AuditEventsHandler(_VREMixin, ServiceAPIHandler):
    """``GET /services/vre/api/audit/events?<filters>&limit=&offset=&order=newest|oldest``."""

    @requires_audit_scope
    async def get(self):
        filters = self._audit_filters()
        limit = self._audit_int("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        offset = self._audit_int("offset", 0, 0)
        order = self._audit_choice("order", "newest", ("newest", "oldest"))
        store = await in_thread(_store, self.vre_settings)
        events = await in_thread(store.query, limit=limit, offset=offset, newest_first=order == "newest",
                                 **filters)
        total = await in_thread(store.count, **filters)
        self.set_header("Cache-Control", "no-store")
        self.finish(to_json({"events": events, "total": total, "limit": limit, "offset": offset}))


class AuditTimelineHandler(_VREMixin, ServiceAPIHandler):
    """``GET /services/vre/api/audit/timeline?bucket=day|hour&<filters>`` -> ``[{bucket, dataset, count}]``."""

    @requires_audit_scope
    async def get(self):
        filters = self._audit_filters()
        bucket = self._audit_choice("bucket", "day", BUCKETS)
        store = await in_thread(_store, self.vre_settings)
        rows = await in_thread(store.timeline, bucket=bucket, **filters)
        self.set_header("Cache-Control", "no-store")
        self.finish(to_json(rows))


class AuditEgressHandler(_VREMixin, ServiceAPIHandler):
    """``GET /services/vre/api/audit/egress?since=&until=&user=&project=&session=`` -> bytes each
    session sent to the browser per day (``[{day, session, user, project, bytes, requests, classes}]``)."""

    @requires_audit_scope
    async def get(self):
        from ..audit.egress import query

        args = {}
        for name in ("since", "until", "user", "project", "session"):
            value = self.get_argument(name, None)
            if value and name in ("since", "until"):
                try:
                    date.fromisoformat(value)
                except ValueError:
                    raise web.HTTPError(400, f"{name}={value!r} is not an ISO date (2026-11-22)") from None
            args[name] = value or None
        rows = await in_thread(query, self.vre_settings, **args)
        self.set_header("Cache-Control", "no-store")
        self.finish(to_json(rows))


class AuditVerifyHandler(_VREMixin, ServiceAPIHandler):
    """``POST /services/vre/api/audit/verify`` -> the integrity report (``ok``, ``length``, ...)."""

    @requires_audit_scope
    async def post(self):
        store = await in_thread(_store, self.vre_settings)
        report = report_dict(await in_thread(store.verify))
        ok = bool(report.get("ok"))
        try:
            await self._audit_record("audit.verify", outcome="ok" if ok else "error", details={
                "ok": ok, "length": report.get("length"), "problem": report.get("problem"),
                "seq": report.get("seq"), "unsealed": report.get("unsealed")})
            report["recorded"] = True
        except Exception:
            # Verifying changes nothing; a tamper finding must not be withheld because the
            # trail refuses a new event. Say so instead.
            self.log.exception("AUDIT FAILURE: could not record audit.verify by %s", self.current_user.name)
            report["recorded"] = False
        self.set_header("Cache-Control", "no-store")
        self.finish(to_json(report))


class _ChunkWriter(io.TextIOBase):
    """A text file for the export thread that hands ~64 KiB chunks to the event loop, waiting while
    the connection is behind (bounded memory for any size of export)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
        self._loop, self._queue, self._parts, self._size = loop, queue, [], 0
        self.cancelled = False

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if self.cancelled:
            raise BrokenPipeError("export cancelled: the client went away")
        self._parts.append(s)
        self._size += len(s)
        if self._size >= EXPORT_CHUNK:
            self._push()
        return len(s)

    def _push(self) -> None:
        if self._parts:
            data = "".join(self._parts).encode("utf-8")
            self._parts, self._size = [], 0
            asyncio.run_coroutine_threadsafe(self._queue.put(data), self._loop).result()

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        self._push()


class AuditExportHandler(_VREMixin, ServiceAPIHandler):
    """``GET /services/vre/api/audit/export?format=jsonl|csv&<filters>``: a download, streamed."""

    @requires_audit_scope
    async def get(self):
        filters = self._audit_filters()
        fmt = self._audit_choice("format", "jsonl", tuple(FORMATS))
        store = await in_thread(_store, self.vre_settings)
        count = await in_thread(store.count, **filters)
        try:  # fail closed: an export that cannot be recorded does not happen
            await self._audit_record("audit.export", details={"format": fmt, "filters": describe_filters(filters),
                                                        "events": count})
        except Exception:
            self.log.exception("AUDIT FAILURE: could not record audit.export by %s", self.current_user.name)
            raise web.HTTPError(503, "the export could not be recorded in the audit trail, so it was refused")

        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        scope = "-".join(_SAFE_NAME.sub("_", str(filters[k]))[:40] for k in ("project", "dataset", "user", "session")
                         if k in filters)
        name = f"vre-audit-{scope + '-' if scope else ''}{stamp}.{fmt}"
        self.set_header("Content-Type", FORMATS[fmt])
        self.set_header("Content-Disposition", f'attachment; filename="{name}"')
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-VRE-Audit-Events", str(count))

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue(maxsize=EXPORT_QUEUE)
        writer = _ChunkWriter(loop, queue)
        done = object()

        def run_export() -> int:
            try:
                n = store.export(fmt, writer, **filters)
                writer.finish()
                return n
            finally:
                asyncio.run_coroutine_threadsafe(queue.put(done), loop).result()

        task = asyncio.ensure_future(asyncio.to_thread(run_export))
        try:
            while True:
                chunk = await queue.get()
                if chunk is done:
                    break
                self.write(chunk)
                await self.flush()
        except StreamClosedError:
            writer.cancelled = True
            while not task.done():  # keep the queue moving until the thread notices and ends
                try:
                    await asyncio.wait_for(queue.get(), timeout=1)
                except asyncio.TimeoutError:
                    pass
            task.exception()  # retrieved: the client left, nothing more to report
            self.log.info("audit export by %s: client went away", self.current_user.name)
            return
        try:
            written = await task
        except Exception as e:
            self.log.exception("audit export by %s failed", self.current_user.name)
            if not self._headers_written:
                self.clear_header("Content-Disposition")
                raise web.HTTPError(500, f"the export failed: {e}") from None
            # the headers are out: end the connection early so that the download shows as failed
            self.request.connection.close()
            return
        self.log.info("audit export by %s: %s events as %s", self.current_user.name, written, fmt)
        self.finish()


def handlers(settings: Settings) -> list[tuple]:
    """The routes of this module (relative to the service's prefix), with the VRE settings bound."""
    kw = {"vre_settings": settings}
    return [
        (r"audit/?", AuditPageHandler, kw),
        (r"api/audit/events", AuditEventsHandler, kw),
        (r"api/audit/export", AuditExportHandler, kw),
        (r"api/audit/verify", AuditVerifyHandler, kw),
        (r"api/audit/timeline", AuditTimelineHandler, kw),
        (r"api/audit/egress", AuditEgressHandler, kw),
    ]
