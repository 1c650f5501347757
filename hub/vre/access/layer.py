"""The access layer's HTTP side: every request to the hub's public address passes here first.

* ``/user/<name>/<server>/...`` of a running session: authenticated (:mod:`vre.access.auth`),
  checked against the session's policy (:mod:`vre.access.policy`), forwarded straight to the
  session server's socket, its answer metered (:mod:`vre.access.meter`); kernel websockets are
  read for cell audit;
* ``/services/vre-access/oauth_callback``: the end of the layer's own login;
* everything else (the hub, its services, sessions that do not run): forwarded to
  configurable-http-proxy, which routes as JupyterHub told it. A session's route there points
  back at this layer's internal socket, so no path reaches a session around it.

Refusals answer JSON ``{"status", "reason", "message"}`` and are recorded through the broker.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import gzip
import ipaddress
import json
import logging
import time
import zlib
from urllib.parse import unquote, urlsplit

import aiohttp
from aiohttp import WSMsgType, web

from . import kernelmsg, policy
from .auth import CALLBACK, COOKIE, STATE_COOKIE, Caller, Login, safe_next
from .broker import MAX_MESSAGE, BrokerClient, BrokerError
from .meter import CAP_MESSAGE, CEILING_MESSAGE, LARGE, Meter, ceiling, human
from .routes import RouteTable, SessionRoute, proxy_client

log = logging.getLogger("vre.access")
SERVER = "vre-access"
HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
       "transfer-encoding", "upgrade", "proxy-connection"}
WS_HEADERS = {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol",
              "sec-websocket-accept"}
#: Largest contents answer the layer reads whole to check (larger ones are refused under a mode
#: that needs the check: the Lab cannot open such files usefully either).
MAX_INSPECT = 512 << 20
TERMINAL_LINE = 4000
#: The header that tells upstream who the client is: JupyterHub and the VRE service run tornado
#: with ``xheaders``, which takes it as the request's ``remote_ip`` (their audit's ``client``)
#: before any ``X-Forwarded-For`` entry. Only the layer sets it; one a browser sends is dropped.
CLIENT_HEADER = "X-Real-Ip"


def client_address(request: web.Request) -> str:
    """The address of the browser (or API client) behind ``request``, for the audit and for
    upstream: the layer's TCP peer on the public side. On the internal socket only
    configurable-http-proxy connects (its directory is root's, 0700), with requests the public
    side forwarded: there it is the address that side put in ``CLIENT_HEADER``."""
    if request.app.get("internal"):
        claimed = request.headers.get(CLIENT_HEADER, "")
        try:
            return str(ipaddress.ip_address(claimed))
        except ValueError:
            pass
    return request.remote or ""


def _egress_class(rest: str, route: policy.Route) -> str:
    if route.kind in ("kernel", "terminal"):
        return route.kind
    if route.kind in ("download", "contents"):
        return "files" if route.kind == "download" else "contents"
    head = rest.split("/", 1)[0]
    if head == "vre":
        return "viewer"
    if head in ("static", "lab") or rest.startswith("lab/"):
        return "static"
    return "other"


def _json_error(status: int, reason: str, message: str, **headers) -> web.Response:
    return web.Response(status=status, text=json.dumps({"status": status, "reason": reason, "message": message}),
                        content_type="application/json", headers={"Cache-Control": "no-store", **headers})


#: Bytes of audit events sent to the broker in one request at most (its limit is MAX_MESSAGE).
RECORDS_PART = MAX_MESSAGE // 4


def _parts(events: list[dict], budget: int):
    """``events`` in consecutive parts of at most ``budget`` bytes of JSON each (an event larger
    than that alone: the broker refuses it if it is over its own limit, and says so)."""
    part, size = [], 0
    for e in events:
        n = len(json.dumps(e, default=str)) + 2
        if part and size + n > budget:
            yield part
            part, size = [], 0
        part.append(e)
        size += n
    if part:
        yield part


class AccessLayer:
    def __init__(self, *, login: Login, routes: RouteTable, checks: BrokerClient, records: BrokerClient,
                 chp_url: str):
        self.login = login
        self.routes = routes
        self.checks = checks      # path checks, on the request path
        self.records = records    # audit and egress: durable commits
        self.chp_url = chp_url.rstrip("/")
        self.meter = Meter(lambda rows: records.call("egress", rows=rows))
        self._pending: list[tuple[list[dict], asyncio.Future]] = []
        self._flushing = False
        self.chp = proxy_client(
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        self._anonymous: dict[tuple[str, int], dict] = {}
        self._admin_seen: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task] = set()

    # -- application -------------------------------------------------------------------------
    def app(self, *, internal: bool = False) -> web.Application:
        app = web.Application(client_max_size=0)
        app["internal"] = internal
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def start(self) -> None:
        await self.routes.refresh()
        try:
            self.meter.load((await self.records.call("egress_today", day=self.meter.day))["rows"])
        except BrokerError as e:
            log.error("could not read today's egress totals: %s", e)
        self._spawn(self.meter.run())
        self._spawn(self._housekeeping())

    async def stop(self) -> None:
        await self.meter.flush()
        await self._flush_anonymous(force=True)
        await self.routes.close()
        await self.chp.close()

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(30)
            await self._flush_anonymous()

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = request.raw_path.split("?", 1)[0]
        if raw == CALLBACK:
            return await self.oauth_callback(request)
        route = self.routes.match(raw)
        if route is None and raw.startswith("/user/"):
            try:
                await self.routes.refresh(on_miss=True)
            except Exception as e:  # noqa: BLE001 - the proxy is restarting: the hub answers below
                log.warning("could not read the proxy's routes: %s", e)
            route = self.routes.match(raw)
        if route is not None:
            return await self.session_request(request, route, raw)
        if request.app["internal"]:
            # The proxy sent a session path here but the layer has no such session (it stopped or
            # is being re-routed): never pass it on, the browser retries through the front door.
            return _json_error(503, "no_route", "This session is starting or stopping; reload in a moment.",
                               **{"Retry-After": "1"})
        return await self.forward(request, self.chp, self.chp_url)

    async def oauth_callback(self, request: web.Request) -> web.StreamResponse:
        """The end of the layer's login: swap the code for a token, keep it in the cookie, go back."""
        state = self.login.check_state(request.cookies.get(STATE_COOKIE), request.query.get("state", ""))
        if state is None:
            return web.Response(status=400, text="This login link has expired or was not started here; "
                                                 "open your session again.")
        code = request.query.get("code")
        if not code:
            return web.Response(status=400, text=f"The hub did not log you in: {request.query.get('error', 'no code')}")
        try:
            token = await self.login.token_for_code(code, state["verifier"])
        except Exception as e:  # noqa: BLE001 - a clear page for the browser, the cause in the log
            log.warning("OAuth code exchange failed: %s", e)
            return web.Response(status=400, text="The hub did not confirm this login; open your session again.")
        resp = web.HTTPFound(safe_next(state.get("next")))
        resp.set_cookie(COOKIE, self.login.cookie_value(token),
                        **self.login.cookie_options("/user/", 24 * 3600, _https(request)))
        resp.del_cookie(STATE_COOKIE, path=CALLBACK)
        return resp

    # -- sessions ----------------------------------------------------------------------------
    async def identify(self, request: web.Request, websocket: bool) -> Caller | None:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() in ("token", "bearer") and value.strip():
            return await self.login.caller(value.strip(), "header")
        token = self.login.cookie_token(request.cookies.get(COOKIE))
        if token:
            return await self.login.caller(token, "cookie")
        if websocket and request.query.get("token"):
            return await self.login.caller(request.query["token"], "url")
        return None

    async def session_request(self, request: web.Request, route: SessionRoute, raw: str) -> web.StreamResponse:
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        caller = await self.identify(request, websocket)
        if caller is None:
            self._note_anonymous(route, request)
            navigation = request.method == "GET" and not websocket and _is_navigation(request, route, raw)
            if navigation:
                url, state = self.login.start(request.raw_path)
                resp = web.HTTPFound(url)
                resp.set_cookie(STATE_COOKIE, state, **self.login.cookie_options(CALLBACK, 600, _https(request)))
                resp.del_cookie(COOKIE, path="/user/")
                return resp
            return _json_error(401, "login_required", "Log in to the hub to reach this session.")
        if not caller.may_access(route.user, route.server):
            await self._record(dict(action="access.refused", actor=caller.name, outcome="denied",
                                    actor_role="service" if caller.kind == "service" else None,
                                    target=f"{route.user}/{route.server}", project=route.project,
                                    session=route.audit_session, client=client_address(request),
                                    details={"reason": "not_permitted", "path": raw[:500], "via": caller.via}))
            return _json_error(403, "forbidden", f"{caller.name} may not use {route.user}'s session.")
        if caller.via == "cookie" and websocket and not self._same_origin(request):
            return _json_error(403, "cross_origin", "A websocket from another site may not use this session.")
        if caller.name != route.user and (caller.name, route.prefix) not in self._admin_seen:
            self._admin_seen.add((caller.name, route.prefix))
            await self._record(dict(action="admin.server_access", actor=caller.name, target=f"{route.user}/{route.server}",
                                    project=route.project, session=route.audit_session, client=client_address(request),
                                    details={"path": raw[:500]}))
        rest = unquote(raw[len(route.prefix):]) if raw.startswith(route.prefix) else ""
        r = policy.classify(rest, request.method, request.query_string)
        klass = _egress_class(rest, r)
        if r.kind == "refuse":
            await self._record(dict(action="access.refused", actor=caller.name, outcome="denied",
                                    target=f"{route.user}/{route.server}", project=route.project,
                                    session=route.audit_session, client=client_address(request),
                                    details={"reason": "route_not_allowed", "path": raw[:500], "via": caller.via}))
            return _json_error(403, "route_refused", "The VRE does not serve this address of a session.")
        if r.kind == "policy":
            return self._policy_answer(route)
        cap = route.egress_cap
        if self.meter.past_ceiling(route.user, route.project, cap):
            await self._cap_reached(route, caller, request, klass, limit="ceiling")
            return _json_error(429, "egress_ceiling", CEILING_MESSAGE.format(ceiling=human(ceiling(cap))))
        if r.kind in ("kernel", "terminal") and websocket:
            return await self.forward_ws(request, route, caller, r, klass)
        check = None
        if r.kind in ("download", "contents"):
            verdict, check = await self._file_check(route, r, request)
            if verdict is not None and not verdict.allowed:
                await self._refused(caller, route, request, r, verdict.reason, check.get("path") if check else r.path,
                                    check)
                return _json_error(403, "download_refused", verdict.message)
        return await self.forward(request, route.http(), route.base, route=route, caller=caller, klass=klass,
                                  inspect=r if r.kind in ("download", "contents") else None, resolved=check)

    async def _file_check(self, route: SessionRoute, r: policy.Route, request: web.Request):
        try:
            check = await self.checks.call("classify", session=route.session, path=r.path or "",
                                           raw=r.kind == "download")
        except BrokerError as e:
            log.error("cannot resolve %s in %s: %s", r.path, route.session, e)
            return policy.Verdict(False, "unresolved", "The VRE could not check this file; try again."), None
        mode = route.policy.get("downloads", "none")
        if r.kind == "contents":
            return policy.decide_contents(mode, check["kind"], check["path"], is_dir=check["dir"],
                                          dicom=check["dicom"]), check
        image = request.headers.get("Sec-Fetch-Dest") == "image" and r.label == "files"
        return policy.decide(mode, check["kind"], check["path"], is_dir=check["dir"], dicom=check["dicom"],
                             image_embed=image), check

    def _policy_answer(self, route: SessionRoute) -> web.Response:
        cap = route.egress_cap
        body = {"downloads": route.policy.get("downloads", "none"), "audit_cells": bool(route.policy.get("audit_cells")),
                "egress": {"today": self.meter.used(route.user, route.project), "cap": cap,
                           "capped": self.meter.over(route.user, route.project, cap),
                           "ceiling": ceiling(cap), "closed": self.meter.past_ceiling(route.user, route.project, cap)}}
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    def _same_origin(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if not origin:
            return True  # not a browser (browsers always send Origin on websockets)
        return urlsplit(origin).netloc == request.headers.get("Host", request.host)

    # -- forwarding --------------------------------------------------------------------------
    def _upstream_headers(self, request: web.Request, *, session: bool) -> dict:
        """The request's headers for upstream, less hop-by-hop ones, with the client's address in
        ``CLIENT_HEADER`` (whatever the client sent there, in any case, is dropped: it would
        otherwise be the address JupyterHub and the VRE service record) and appended to
        ``X-Forwarded-For`` (whose earlier entries are the client's word)."""
        headers = {}
        for k, v in request.headers.items():
            lk = k.lower()
            if lk in HOP or lk in WS_HEADERS or lk == CLIENT_HEADER.lower() or \
                    lk == "content-length" and not request.body_exists:
                continue
            if lk == "cookie" and session:
                v = "; ".join(c for c in v.split("; ") if not c.startswith((COOKIE + "=", STATE_COOKIE + "=")))
                if not v:
                    continue
            headers[k] = v if k not in headers else f"{headers[k]}, {v}"
        peer = request.remote or ""
        xff = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{xff}, {peer}" if xff else peer
        client = client_address(request)
        if client:
            headers[CLIENT_HEADER] = client
        headers.setdefault("X-Forwarded-Proto", request.scheme)
        headers.setdefault("X-Forwarded-Host", request.headers.get("Host", ""))
        return headers

    async def forward(self, request: web.Request, client: aiohttp.ClientSession, base: str, *,
                      route: SessionRoute | None = None, caller: Caller | None = None, klass: str = "other",
                      inspect: policy.Route | None = None, resolved: dict | None = None) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self.forward_ws(request, route, caller, None, klass, client=client, base=base)
        headers = self._upstream_headers(request, session=route is not None)
        data = request.content if request.body_exists else None
        try:
            up = await client.request(request.method, base + request.raw_path, headers=headers, data=data,
                                      allow_redirects=False)
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
            if route is not None:
                self._spawn(self.routes.refresh())
                return _json_error(503, "session_unreachable", "The session does not answer; it may have stopped.")
            log.warning("proxy unreachable for %s: %s", request.path, e)
            return _json_error(503, "hub_unreachable", "The hub is restarting; reload in a moment.",
                               **{"Retry-After": "2"})
        async with up:
            first = b""
            if route is not None and inspect is not None and up.status == 200:
                refused, first = await self._inspect(up, route, inspect, resolved)
                if refused is not None:
                    await self._refused(caller, route, request, inspect, refused.reason,
                                        (resolved or {}).get("path") or inspect.path, resolved)
                    return _json_error(403, "download_refused", refused.message)
            if route is not None:
                cap = route.egress_cap
                size = up.content_length
                if self.meter.over(route.user, route.project, cap) and (size is None or size > LARGE):
                    await self._cap_reached(route, caller, request, klass)
                    return _json_error(429, "egress_cap", CAP_MESSAGE.format(cap=human(cap)))
            resp = web.StreamResponse(status=up.status, reason=up.reason)
            for k, v in up.headers.items():
                if k.lower() not in HOP:
                    resp.headers.add(k, v)
            if route is None:
                resp.headers.setdefault("Server", SERVER)
            await resp.prepare(request)
            sent = 0
            if first:
                await resp.write(first)
                sent += len(first)
            if route is not None:
                self.meter.add(route.audit_session, route.user, route.project, klass, len(first), request=True)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
                sent += len(chunk)
                if route is not None:
                    self.meter.add(route.audit_session, route.user, route.project, klass, len(chunk))
                    if sent > LARGE and self.meter.over(route.user, route.project, cap):
                        return await self._cut(request, resp, route, caller, klass, sent)
                    if self.meter.past_ceiling(route.user, route.project, cap):
                        return await self._cut(request, resp, route, caller, klass, sent, limit="ceiling")
            await resp.write_eof()
            return resp

    async def _cut(self, request, resp, route, caller, klass, sent: int, limit: str = "cap") -> web.StreamResponse:
        """A large answer that crossed the cap while it was being sent is cut there: a transfer
        started just under the cap must not carry on for gigabytes. The connection is closed
        without the end of the body, so the client sees an incomplete answer, not a short file."""
        await self._cap_reached(route, caller, request, klass, cut_after=sent, limit=limit)
        if request.transport is not None:
            request.transport.close()
        return resp

    async def _inspect(self, up: aiohttp.ClientResponse, route: SessionRoute, r: policy.Route, resolved: dict | None):
        """Check an answer the path alone could not settle: a contents model's format, and DICOM in
        any file's first bytes (a link swapped after the check). Returns (refusal or None, bytes read)."""
        mode = route.policy.get("downloads", "none")
        kind = (resolved or {}).get("kind", "system")
        path = (resolved or {}).get("path", r.path or "")
        if r.kind == "contents":
            if up.content_length is not None and up.content_length > MAX_INSPECT:
                return policy.Verdict(False, "size", "This file is too large to open in the browser."), b""
            body = await up.content.read()
            text = body
            encoding = up.headers.get("Content-Encoding", "").lower()
            if encoding == "gzip":
                text = gzip.decompress(body)
            elif encoding == "deflate":
                text = zlib.decompress(body)
            try:
                model = json.loads(text)
            except ValueError:
                return None, body
            if isinstance(model, dict) and model.get("format") == "base64" and isinstance(model.get("content"), str):
                head = base64.b64decode(model["content"][:200] + "=" * (-len(model["content"][:200]) % 4))
                if len(head) >= 132 and head[128:132] == b"DICM":
                    return policy.Verdict(False, "dicom", policy.DICOM_MESSAGE), b""
            verdict = policy.decide_contents_answer(mode, kind, path, model if isinstance(model, dict) else {})
            return (None if verdict.allowed else verdict), body
        first = b""
        while len(first) < 132 and not up.content.at_eof():
            chunk = await up.content.read(132 - len(first))
            if not chunk:
                break
            first += chunk
        if up.headers.get("Content-Encoding", "").lower() in ("", "identity") and len(first) >= 132 \
                and first[128:132] == b"DICM":
            return policy.Verdict(False, "dicom", policy.DICOM_MESSAGE), b""
        return None, first

    async def forward_ws(self, request: web.Request, route: SessionRoute | None, caller: Caller | None,
                         r: policy.Route | None, klass: str, *, client: aiohttp.ClientSession | None = None,
                         base: str = "") -> web.StreamResponse:
        client = client or route.http()
        base = base or route.base
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        headers = self._upstream_headers(request, session=route is not None)
        try:
            up = await client.ws_connect(base + request.raw_path, headers=headers, protocols=offered,
                                         max_msg_size=0, compress=0, autoping=True, autoclose=False)
        except aiohttp.WSServerHandshakeError as e:
            return web.Response(status=e.status or 502, text=e.message or "websocket refused")
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError):
            return _json_error(503, "session_unreachable", "The session does not answer; it may have stopped.")
        ws = web.WebSocketResponse(protocols=[up.protocol] if up.protocol else (), max_msg_size=0, compress=False,
                                   autoping=True, autoclose=False)
        await ws.prepare(request)
        audit = route is not None and r is not None and bool(route.policy.get("audit_cells"))
        subprotocol = up.protocol
        line = [""]

        async def browser_to_server():
            async for msg in ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    if audit and not await self._audit_frame(route, caller, r, msg.data, subprotocol, line):
                        await ws.close(code=1011, message=b"the VRE could not record this code")
                        break
                    if msg.type == WSMsgType.TEXT:
                        await up.send_str(msg.data)
                    else:
                        await up.send_bytes(msg.data)
                elif msg.type == WSMsgType.CLOSE:
                    break
            await up.close()

        cap = route.egress_cap if route is not None else 0

        async def server_to_browser():
            async for msg in up:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR):
                        break
                    continue
                data = msg.data
                if route is not None:
                    size = len(data)
                    if self.meter.past_ceiling(route.user, route.project, cap):
                        await self._past_ceiling(ws, route, caller, request, klass, data, subprotocol, cap, r)
                        break
                    # a frame is sent whole or not at all: a large one that would pass the cap is withheld
                    if size > LARGE and self.meter.over(route.user, route.project, cap, size):
                        await self._cap_reached(route, caller, request, klass)
                        data = self._withheld(data, subprotocol, cap, r)
                        if data is None:
                            continue
                    self.meter.add(route.audit_session, route.user, route.project, klass,
                                   len(data) if isinstance(data, bytes) else len(data.encode()))
                if isinstance(data, str):
                    await ws.send_str(data)
                else:
                    await ws.send_bytes(data)
            await ws.close()

        tasks = [asyncio.ensure_future(browser_to_server()), asyncio.ensure_future(server_to_browser())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await up.close()
            await ws.close()
        return ws

    async def _past_ceiling(self, ws, route, caller, request, klass, data, subprotocol, cap: int, r) -> None:
        """The day's ceiling is passed: one notice in the cell (kernels), then the connection closes.
        The Lab's reconnections are refused at the upgrade with the same reason."""
        await self._cap_reached(route, caller, request, klass, limit="ceiling")
        text = CEILING_MESSAGE.format(ceiling=human(ceiling(cap)))
        msg = kernelmsg.parse(data, subprotocol, content=False) if r is not None and r.kind == "kernel" else None
        if msg is not None and msg.channel == "iopub":
            notice = kernelmsg.stream_notice(msg, "[VRE] " + text + "\n", subprotocol)
            self.meter.add(route.audit_session, route.user, route.project, klass,
                           len(notice) if isinstance(notice, bytes) else len(notice.encode()))
            await (ws.send_str(notice) if isinstance(notice, str) else ws.send_bytes(notice))
        await ws.close(code=1008, message=b"daily data limit for the browser passed")

    def _withheld(self, data, subprotocol, cap: int, r: policy.Route | None):
        """A kernel message over the cap becomes a notice in the same cell; other large frames are dropped."""
        if r is None or r.kind != "kernel":
            return None
        msg = kernelmsg.parse(data, subprotocol, content=False)
        if msg is None or msg.channel != "iopub":
            return None
        return kernelmsg.stream_notice(msg, "[VRE] Output withheld: " + CAP_MESSAGE.format(cap=human(cap)) + "\n",
                                       subprotocol)

    async def _audit_frame(self, route, caller, r: policy.Route, data, subprotocol, line: list) -> bool:
        """Record code before it reaches the kernel (False: it could not be recorded, do not send)."""
        events = []
        base = dict(actor=route.user, project=route.project, session=route.audit_session)
        if r.kind == "kernel":
            ran = kernelmsg.executed_code(kernelmsg.parse(data, subprotocol))
            if ran is not None and ran[1].strip():
                kind, code = ran
                events.append(dict(action="cell.execute", target=r.name, **base, details={
                    "code": code[:kernelmsg.MAX_CODE], "truncated": len(code) > kernelmsg.MAX_CODE, "kind": kind,
                    "by": caller.name if caller else route.user}))
        elif r.kind == "terminal" and isinstance(data, str):
            try:
                msg = json.loads(data)
            except ValueError:
                msg = None
            if isinstance(msg, list) and len(msg) >= 2 and msg[0] == "stdin" and isinstance(msg[1], str):
                for ch in msg[1]:
                    if ch in "\r\n":
                        if line[0].strip():
                            events.append(dict(action="terminal.input", target=r.name, **base,
                                               details={"line": line[0][:TERMINAL_LINE]}))
                        line[0] = ""
                    elif len(line[0]) < TERMINAL_LINE:
                        line[0] += ch
        if not events:
            return True
        return await self._record_many(events)

    # -- audit -------------------------------------------------------------------------------
    async def _record(self, event: dict) -> bool:
        return await self._record_many([event])

    async def _record_many(self, events: list[dict]) -> bool:
        """Store events durably; True once stored. Concurrent callers share one commit (group
        commit): whatever queues while a commit runs goes in the next one."""
        stamped = []
        for e in events:
            e = {k: v for k, v in e.items() if v is not None}
            e.setdefault("time", _now())
            stamped.append(e)
        done = asyncio.get_running_loop().create_future()
        self._pending.append((stamped, done))
        if not self._flushing:
            self._flushing = True
            self._spawn(self._flush_records())
        return await done

    async def _flush_records(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                events = [e for group, _ in batch for e in group]
                ok = True
                for part in _parts(events, RECORDS_PART):   # each request under the broker's size limit
                    try:
                        await self.records.call("audit", events=part)
                    except BrokerError as e:
                        log.error("AUDIT FAILURE: %s (%s)", e, sorted({x["action"] for x in part}))
                        ok = False
                for _, done in batch:
                    if not done.done():
                        done.set_result(ok)
        finally:
            self._flushing = False

    async def _refused(self, caller, route, request, r: policy.Route, reason: str, path, check: dict | None) -> None:
        await self._record(dict(action="download.refused", actor=caller.name if caller else route.user,
                                outcome="denied", target=str(path or "")[:1000], project=route.project,
                                dataset=(check or {}).get("dataset"),
                                session=route.audit_session, client=client_address(request),
                                details={"route": r.label or r.kind, "reason": reason, "method": request.method,
                                         "url": request.path[:500], "query": request.query_string[:300]}))

    async def _cap_reached(self, route, caller, request, klass, *, cut_after: int | None = None,
                           limit: str = "cap") -> None:
        """Record, once per session and day for each limit, that the cap (large answers withheld)
        or the ceiling (nothing more sent) was reached."""
        if self.meter.first_refusal(route.audit_session, limit):
            cap = route.egress_cap
            details = {"cap": cap, "used": self.meter.used(route.user, route.project), "class": klass,
                       "limit": limit}
            if limit == "ceiling":
                details["ceiling"] = ceiling(cap)
            if cut_after is not None:
                details.update(cut_after=cut_after, path=request.path[:500])
            await self._record(dict(action="egress.cap_reached", actor=route.user, outcome="denied",
                                    target=f"{route.user}/{route.server}", project=route.project,
                                    session=route.audit_session, client=client_address(request), details=details))

    def _note_anonymous(self, route: SessionRoute, request: web.Request) -> None:
        """Requests without a login: the first per session and minute is recorded at once, the rest
        of that minute as one count afterwards (a scanner cannot flood the trail)."""
        minute = int(time.time() // 60)
        key = (route.prefix, minute)
        entry = self._anonymous.get(key)
        if entry is None:
            self._anonymous[key] = {"count": 0, "clients": [], "route": route}
            self._spawn(self._record(self._anonymous_event(route, 1, [client_address(request)], minute, first=True)))
        else:
            entry["count"] += 1
            client = client_address(request)
            if len(entry["clients"]) < 5 and client not in entry["clients"]:
                entry["clients"].append(client)
        self._spawn(self._flush_anonymous())

    @staticmethod
    def _anonymous_event(route: SessionRoute, count: int, clients: list, minute: int, *, first: bool) -> dict:
        return dict(action="access.refused", actor="anonymous", actor_role="anonymous", outcome="denied",
                    target=f"{route.user}/{route.server}", project=route.project, session=route.audit_session,
                    client=clients[0] if clients else None,
                    details={"reason": "login_required", "requests": count, "clients": clients,
                             "aggregate": "first" if first else "rest_of_minute",
                             "minute": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(minute * 60))})

    async def _flush_anonymous(self, force: bool = False) -> None:
        minute = int(time.time() // 60)
        done = [k for k in self._anonymous if force or k[1] < minute]
        events = []
        for key in done:
            entry = self._anonymous.pop(key)
            if entry["count"]:
                events.append(self._anonymous_event(entry["route"], entry["count"], entry["clients"], key[1],
                                                    first=False))
        if events:
            await self._record_many(events)


def _is_navigation(request: web.Request, route: SessionRoute, raw: str) -> bool:
    """A page load (sent into the login) rather than an API call (answered 401): what the browser
    says (``Sec-Fetch-Mode``), else, for clients that say nothing, whether it asks for HTML or a
    page rather than an API path (as jupyter_server tells pages from APIs)."""
    mode = request.headers.get("Sec-Fetch-Mode")
    if mode is not None:
        return mode == "navigate"
    if "text/html" in request.headers.get("Accept", ""):
        return True
    rest = raw[len(route.prefix):] if raw.startswith(route.prefix) else ""
    return not rest.startswith(("api/", "lab/api/", "vre/api/", "files/", "terminals/"))


def _https(request: web.Request) -> bool:
    return request.secure or request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip() == "https"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()
