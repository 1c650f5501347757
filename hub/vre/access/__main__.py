"""``python -m vre.access``: the access layer, started (as root) by the hub's proxy class.

As root it binds its sockets (the public address, the proxy's way in, the hub's control socket),
reads its secrets and forks the broker (:mod:`vre.access.broker`); then it drops to
``settings.access_uid`` (with the sessions' group, to reach the hub's socket), forbids itself new
privileges and core dumps, and serves. The researcher's sessions can reach none of it: its
sockets are in a root-only directory, and it shares no uid, namespace or file with a session.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import sys
from urllib.parse import urlsplit

from aiohttp import web

from ..hostfiles import read_or_create_secret
from ..settings import Settings, load
from . import api_token_file, control_socket, internal_socket, socket_dir
from . import broker as broker_mod
from .auth import Login
from .layer import AccessLayer
from .routes import RouteTable

log = logging.getLogger("vre.access")
PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 4, 38


def _unix_listener(path) -> socket.socket:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    os.chmod(path, 0o600)
    s.listen(512)
    s.setblocking(False)
    return s


def _public_listener(bind_url: str) -> socket.socket:
    url = urlsplit(bind_url)
    host = url.hostname or "127.0.0.1"
    port = url.port or (443 if url.scheme == "https" else 80)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(1024)
    s.setblocking(False)
    return s


def drop_privileges(settings: Settings) -> None:
    os.setgroups([settings.sessions_gid])
    os.setgid(settings.access_uid)
    os.setuid(settings.access_uid)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    if os.getuid() == 0 or os.geteuid() == 0:
        raise SystemExit("the access layer could not drop root")


async def serve(settings: Settings, listeners: dict, broker_socks: list, secrets: dict, chp_url: str) -> None:
    login = Login(api_url=settings.hub_local_url + "/hub/api",
                  api_token=secrets["api_token"], secret=secrets["cookie_secret"])
    routes = RouteTable(settings.proxy_api_url, secrets["chp_token"])
    stop = asyncio.Event()   # set by SIGTERM/SIGINT, or when the broker is gone (the hub restarts the layer)
    checks, records = (broker_mod.BrokerClient(s, on_gone=stop.set) for s in broker_socks)
    layer = AccessLayer(login=login, routes=routes, checks=checks, records=records, chp_url=chp_url)
    try:
        await layer.start()
    except Exception as e:  # noqa: BLE001 - the proxy may still be starting: routes load on first use
        log.warning("starting without the proxy's routes: %s", e)

    async def refresh(_request):
        await routes.refresh()
        return web.json_response({"routes": len(routes.routes)})

    control = web.Application()
    control.router.add_post("/refresh", refresh)
    control.router.add_get("/health", lambda _r: web.json_response({"ok": True}))
    runners = []
    for app, sock in ((layer.app(), listeners["public"]), (layer.app(internal=True), listeners["internal"]),
                      (control, listeners["control"])):
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        runners.append(runner)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("access layer on %s (uid %d); proxy behind it at %s", settings.bind_url, os.getuid(), chp_url)
    await stop.wait()
    for runner in runners:
        await runner.cleanup()
    await layer.stop()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s vre-access] %(message)s")
    if os.geteuid() != 0:
        raise SystemExit("vre.access starts as root (it binds its sockets and forks its broker, then drops root)")
    settings = load()
    chp_url = os.environ.get("VRE_ACCESS_PROXY_URL") or settings.proxy_internal_url
    if not chp_url:
        raise SystemExit("VRE_ACCESS_PROXY_URL (the proxy behind the layer) is not set; the hub's proxy class sets it")
    os.umask(0o077)
    secrets = {"api_token": read_or_create_secret(api_token_file(settings)),
               "cookie_secret": read_or_create_secret(settings.secrets_dir / "access_cookie_secret").encode(),
               "chp_token": read_or_create_secret(settings.secrets_dir / "proxy_auth_token")}
    directory = socket_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    os.chown(directory, 0, 0)
    os.chmod(directory, 0o700)
    listeners = {"public": _public_listener(settings.bind_url), "internal": _unix_listener(internal_socket(settings)),
                 "control": _unix_listener(control_socket(settings))}
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in ("checks", "records")]
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        for s in (*listeners.values(), *(parent for parent, _ in pairs)):
            s.close()
        try:
            broker_mod.run_child(settings, [child for _, child in pairs])
        finally:
            os._exit(0)
    for _, child in pairs:
        child.close()
    drop_privileges(settings)
    # The broker (root) cannot be signalled from here any more: it exits when this end closes,
    # or with this process (its parent-death signal).
    asyncio.run(serve(settings, listeners, [parent for parent, _ in pairs], secrets, chp_url))


if __name__ == "__main__":
    main()
