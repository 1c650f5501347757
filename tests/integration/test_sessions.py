"""Sessions on a real hub, probed from inside a real kernel: the security suite of every backend.

Runs with bubblewrap sandboxes once per database (SQLite, PostgreSQL) and with containers (the
docker backend on Podman, SQLite). The policy is the same for both; where a backend has stricter
facts of its own (the sandbox has no interface but loopback, the container one on its project's
internal network) both the common policy and those facts are checked. Isolation is proven without
sending a single packet off this machine: by the interfaces and routes a session has, and by
failing to reach listeners that the test itself opens on the host (its loopback, and its side of
the project network).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import requests
from hubclient import HubError, KernelDied

SESSION_BACKENDS = ["sqlite", "postgresql", pytest.param("docker", marks=pytest.mark.docker)]
pytestmark = [pytest.mark.integration, pytest.mark.parametrize("hub", SESSION_BACKENDS, indirect=True)]


@pytest.fixture(scope="module")
def alice(hub):
    c = hub.client("alice")
    c.start("lung-screening")
    k = c.kernel("lung-screening")
    yield c, k
    k.close()


def inside(kernel, code: str):
    """Run ``code`` (which must assign ``result``) in the kernel; return ``result`` as JSON data."""
    out = kernel.check(code + "\nimport json as _j; print('@@' + _j.dumps(result))")
    return json.loads(out.rsplit("@@", 1)[1])


VIRTUAL_FS = ("proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "overlay", "devtmpfs")


# --- filesystem -----------------------------------------------------------------------------
def test_data_is_read_only_and_only_granted_datasets_exist(alice):
    _, k = alice
    result = inside(k, """
import os, errno
result = {"data": sorted(os.listdir("/data")), "errors": {}}
ds = "/data/lung-ct-screening"
some_file = next(os.path.join(d, f) for d, _, fs in os.walk(ds) for f in fs)
attempts = {
    "create": lambda: open(os.path.join(ds, "new.txt"), "w"),
    "overwrite": lambda: open(some_file, "r+b"),
    "mkdir": lambda: os.mkdir(os.path.join(ds, "newdir")),
    "unlink": lambda: os.unlink(some_file),
    "rename": lambda: os.rename(some_file, some_file + ".x"),
    "chmod": lambda: os.chmod(some_file, 0o777),
    "data-root": lambda: open("/data/new.txt", "w"),
}
for name, attempt in attempts.items():
    try:
        attempt()
        result["errors"][name] = "succeeded"
    except OSError as e:
        result["errors"][name] = errno.errorcode[e.errno]
result["readable"] = len(open(some_file, "rb").read(132)) == 132
""")
    assert result["data"] == ["lung-ct-screening"]
    assert result["readable"]
    for name, outcome in result["errors"].items():
        assert outcome in ("EROFS", "EACCES", "EPERM"), f"{name} on /data: {outcome}"
    assert result["errors"]["create"] == "EROFS"


def test_workspace_and_home_are_writable_and_shared_as_designed(alice, hub):
    _, k = alice
    result = inside(k, """
import os
open("/home/jovyan/notes.txt", "w").write("private")
open("/home/jovyan/project/shared.txt", "w").write("shared")
result = sorted(os.listdir("/home/jovyan/project"))
""")
    assert "shared.txt" in result
    workspace = hub.state / "projects" / "lung-screening" / "workspace" / "shared.txt"
    home = hub.state / "projects" / "lung-screening" / "homes" / "alice" / "notes.txt"
    assert workspace.read_text() == "shared" and home.read_text() == "private"
    assert workspace.stat().st_mode & 0o020, "workspace files must be group-writable for project members"


def test_nothing_else_of_the_host_is_visible(alice, hub):
    _, k = alice
    other_dataset = str(hub.state / "demo-data" / "prostate-mri")
    result = inside(k, f"""
import os, sys
venv = sys.prefix
seen = set()
for top in sorted(os.listdir("/")):
    if top in ("proc", "dev", "usr", "bin", "lib", "lib64", "sbin"):
        continue
    for dirpath, dirnames, filenames in os.walk("/" + top):
        if dirpath.startswith(venv):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            seen.add(os.path.join(dirpath, name))
result = {{
    "top": sorted(os.listdir("/")),
    "outside": sorted(p for p in seen if not p.startswith(
        ("/data/lung-ct-screening", "/opt/vre/catalog/lung-ct-screening", "/home/jovyan", "/etc", "/tmp", "/run",
         venv)) and p not in ("/data", "/opt", "/opt/vre", "/opt/vre/catalog") and not venv.startswith(p)),
    "other_dataset": os.path.exists({other_dataset!r}),
    "state": os.path.exists({str(hub.state)!r}),
    "hub_socket_dir": sorted(os.listdir("/run/vre")),
    "sys": os.path.exists("/sys/class/net"),
    "net": sorted(os.listdir("/sys/class/net")) if os.path.exists("/sys/class/net") else [],
    "venv": venv,
    # every mount of something other than a virtual file system (proc, sysfs, tmpfs, ...) or the
    # image's own root: what of the host's disks the session sees, and where
    "binds": sorted(l.split()[4] for l in open("/proc/self/mountinfo").read().splitlines()
                    if l.split(" - ")[1].split()[0] not in {VIRTUAL_FS!r} and l.split()[4] != "/"),
}}
""")
    assert not result["other_dataset"] and not result["state"]
    # docker: the launch gate's read-only directory (hostview marked the datasets, then "open")
    gate = ["gate"] if hub.session_backend == "docker" else []
    assert result["hub_socket_dir"] == sorted(["hub", "session", "spool", *gate])
    # what comes from the host: the plan's mounts, the manifest, identity and engine files, the sockets
    allowed = {"/data/lung-ct-screening", "/opt/vre/catalog/lung-ct-screening", "/home/jovyan",
               "/home/jovyan/project", "/etc/vre/session.json", "/etc/passwd", "/etc/group",
               "/run/vre/hub", "/run/vre/session", "/run/vre/spool", *(f"/run/vre/{g}" for g in gate)}
    if hub.session_backend == "sandbox":
        # a root built from nothing: /usr, named /etc files and the session environment, no more
        assert result["outside"] == []
        venv_top = result["venv"].split("/")[1]
        assert set(result["top"]) == {"bin", "data", "dev", "etc", "home", "lib", "lib64", "opt", "proc", "run",
                                      "sbin", "tmp", "usr", venv_top}
        assert not result["sys"]
        extra = {"/usr", result["venv"]} | {p for p in result["binds"] if p.startswith("/etc/")}
        assert set(result["binds"]) <= allowed | extra, set(result["binds"]) - allowed - extra
    else:
        # the image's root (read-only, not the host's); from the host only the plan's binds and the
        # engine's own /etc/hosts, /etc/hostname, /etc/resolv.conf and init
        engine = {"/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/run/podman-init", "/sbin/docker-init",
                  "/dev/init"}
        assert set(result["binds"]) <= allowed | engine, set(result["binds"]) - allowed - engine
        assert set(result["net"]) <= {"lo", "eth0"}, result["net"]  # its own interfaces, none of the host's


def test_runs_unprivileged_without_capabilities(alice, hub):
    _, k = alice
    result = inside(k, """
import os
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
def uid_of(pid):
    try:
        return next(l for l in open(f"/proc/{pid}/status") if l.startswith("Uid:")).split()[1]
    except (FileNotFoundError, ProcessLookupError):
        return None
uids = {uid_of(p) for p in os.listdir("/proc") if p.isdigit()} - {None}
result = {"uid": os.getuid(), "uid_map": open("/proc/self/uid_map").read().split(),
          "caps": [status[c].strip() for c in ("CapEff", "CapPrm", "CapBnd")],
          "nnp": status["NoNewPrivs"].strip(), "pid1": open("/proc/1/cmdline").read()[:40],
          "uids": sorted(uids)}
""")
    # its own pid namespace: no process of anyone else is visible
    assert result["uids"] == [str(result["uid"])], result["uids"]
    if hub.session_backend == "sandbox":  # a user namespace maps the host uid to 1000
        assert result["uid"] == 1000 and result["uid_map"][0] == "1000" and result["uid_map"][2] == "1"
        assert "bwrap" in result["pid1"] or "jupyter" in result["pid1"]
    else:  # the container runs as the account's host uid itself (no user namespace), under an init
        assert result["uid"] == 200000 + 1
        assert any(init in result["pid1"] for init in ("tini", "init", "catatonit")), result["pid1"]
    # Seen from the host, every process of the session runs as the account's unprivileged uid.
    pids = (hub.cgroup("alice-lung-screening") / "cgroup.procs").read_text().split()
    assert len(pids) >= 3  # bwrap or the init, the server, the kernel
    host_uids = set()
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue
        host_uids |= set(next(l for l in status.splitlines() if l.startswith("Uid:")).split()[1:])
    assert host_uids == {str(200000 + 1)}, host_uids  # alice is account 1: uid_base + 1
    assert result["caps"] == ["0000000000000000"] * 3
    assert result["nnp"] == "1"


# --- the server is out of the researcher's reach ----------------------------------------------
def test_server_socket_cannot_be_moved_replaced_or_reached_from_inside(alice, hub):
    """A kernel of the same uid as the server tries to put its own listener where the proxy
    connects: move the socket aside, unlink it, bind next to it, loosen it, connect to it. All
    fail, and the session keeps answering through the hub with its real server."""
    c, k = alice
    result = inside(k, """
import os, socket
d = "/run/vre/session"; sock = d + "/jupyter.sock"
def attempt(f):
    try:
        f(); return "done"
    except OSError as e:
        return type(e).__name__
def bind_beside():
    s = socket.socket(socket.AF_UNIX); s.bind(d + "/evil.sock"); s.listen()
def connect():
    s = socket.socket(socket.AF_UNIX); s.connect(sock); s.close()
result = {"rename": attempt(lambda: os.rename(sock, d + "/moved.sock")),
          "unlink": attempt(lambda: os.unlink(sock)),
          "bind": attempt(bind_beside),
          "chmod": attempt(lambda: os.chmod(sock, 0o777)),
          "chmod-dir": attempt(lambda: os.chmod(d, 0o777)),
          "connect": attempt(connect),
          "listing": sorted(os.listdir(d))}
""")
    assert result.pop("listing") == ["jupyter.sock"]
    assert set(result.values()) == {"PermissionError"}, result
    assert c.server_api("lung-screening", "GET", "/status").status_code == 200


def test_server_cannot_be_traced_or_read_by_its_kernels(alice, hub):
    """Same uid, no Yama on this kernel: only the server's non-dumpable flag stands between a
    kernel and the server's memory, environment (its credentials) and ptrace."""
    _, k = alice
    result = inside(k, """
import ctypes, os
def cmdline(p):
    try:
        return open(f"/proc/{p}/cmdline", "rb").read()
    except OSError:
        return b""
# the server itself (not the sandbox's init or tini, whose command lines name it too)
server = next(int(p) for p in os.listdir("/proc") if p.isdigit() and cmdline(p).split(b"\\0")[1:3] == [b"-m", b"vre_session.serve"])
def attempt(f):
    try:
        f(); return "done"
    except OSError as e:
        return type(e).__name__
libc = ctypes.CDLL(None, use_errno=True)
PTRACE_ATTACH = 16
rc = libc.ptrace(PTRACE_ATTACH, server, None, None)
result = {"environ": attempt(lambda: open(f"/proc/{server}/environ", "rb").read()),
          "mem": attempt(lambda: open(f"/proc/{server}/mem", "rb").read(1)),
          "fd": attempt(lambda: os.listdir(f"/proc/{server}/fd")),
          "ptrace": "done" if rc == 0 else os.strerror(ctypes.get_errno()),
          "own_environ": attempt(lambda: open("/proc/self/environ", "rb").read())}
""")
    assert result.pop("own_environ") == "done"  # the kernel itself stays dumpable (debuggers work)
    assert result == {"environ": "PermissionError", "mem": "PermissionError", "fd": "PermissionError",
                      "ptrace": "Operation not permitted"}, result


def test_researcher_config_and_user_site_do_not_reach_the_server(hub):
    """A researcher writes Jupyter configuration and a user-site hook that would switch the VRE
    extension off, then restarts the session: the new server starts with the hub's configuration."""
    c = hub.client("bob")
    c.start("prostate-ai")
    k = c.kernel("prostate-ai")
    try:
        inside(k, """
import os, site
os.makedirs(os.path.expanduser("~/.jupyter"), exist_ok=True)
with open(os.path.expanduser("~/.jupyter/jupyter_server_config.py"), "w") as f:
    f.write("c.ServerApp.jpserver_extensions = {'vre_session': False}\\n")
usersite = os.path.expanduser("~/.local/lib/python3.11/site-packages")
os.makedirs(usersite, exist_ok=True)
with open(os.path.join(usersite, "vre_evil.pth"), "w") as f:
    f.write("import os; os.environ['VRE_EVIL'] = '1'\\n")
result = True
""")
    finally:
        k.close()
    c.stop("prostate-ai")
    c.start("prostate-ai")
    k = c.kernel("prostate-ai")
    try:
        # the dataset API (vre_session's handlers) answers: the extension is loaded
        r = requests.get(f"{c.server_url('prostate-ai')}/vre/api/datasets",
                         headers={"Authorization": f"token {c.token}"}, timeout=30)
        assert r.status_code == 200, r.text
        assert inside(k, "import os\nresult = os.environ.get('VRE_EVIL')") is None
    finally:
        k.close()
        inside_cleanup = c.kernel("prostate-ai")
        inside(inside_cleanup, """
import os, shutil
shutil.rmtree(os.path.expanduser("~/.jupyter"), ignore_errors=True)
shutil.rmtree(os.path.expanduser("~/.local/lib/python3.11/site-packages"), ignore_errors=True)
result = True
""")
        inside_cleanup.close()
        c.stop("prostate-ai")


def test_no_user_namespaces_inside(alice, hub):
    """A process that became root of a user namespace of its own could over-mount paths and
    escape per-mount observation: sandboxes (bubblewrap's --disable-userns) and containers (the
    VRE's seccomp profile) allow none, by unshare, clone or clone3; threads and fork still work."""
    _, k = alice
    result = inside(k, """
import ctypes, os, subprocess, threading
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER = 0x10000000
result = {"unshare": "created" if libc.unshare(CLONE_NEWUSER) == 0 else os.strerror(ctypes.get_errno())}
r = subprocess.run(["unshare", "-U", "-r", "true"], capture_output=True, text=True)
result["unshare -U"] = r.returncode
t = threading.Thread(target=lambda: None); t.start(); t.join()
pid = os.fork()
if pid == 0:
    os._exit(7)
result["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
""")
    assert result["unshare"] != "created" and result["unshare -U"] != 0, result
    assert result["fork"] == 7


# --- network ----------------------------------------------------------------------------------
@pytest.fixture
def host_listener():
    """A TCP listener on the host's loopback that a sandbox must not reach."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.1)
    yield srv.getsockname()[1]
    srv.close()


def test_no_route_out_and_only_the_project_network(alice, hub):
    _, k = alice
    result = inside(k, """
import os
dev = [l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:]]
routes = [l.split() for l in open("/proc/net/route").read().splitlines()[1:]]
routes6 = [l for l in open("/proc/net/ipv6_route").read().splitlines() if not l.endswith(" lo")] \
    if os.path.exists("/proc/net/ipv6_route") else []
result = {"dev": dev, "routes": routes, "routes6": routes6}
""")
    # common policy: no default route (IPv4 or IPv6), no IPv6 route at all, and no interface but
    # loopback and (containers) the one on the project's network
    assert not [r for r in result["routes"] if r[1] == "00000000"], result["routes"]
    assert result["routes6"] == []
    if hub.session_backend == "sandbox":  # the island is loopback only
        assert result == {"dev": ["lo"], "routes": [], "routes6": []}
    else:  # one interface on the internal network, with only its on-link route
        assert sorted(result["dev"]) == ["eth0", "lo"], result["dev"]
        assert [r[0] for r in result["routes"]] == ["eth0"] and result["routes"][0][2] == "00000000", result


def test_host_loopback_and_hub_ports_unreachable(alice, hub, host_listener):
    _, k = alice
    hub_port = int(hub.url.rsplit(":", 1)[1])  # the access layer's public port
    proxy_api_port = int(hub.env["VRE_PROXY_API_URL"].rsplit(":", 1)[1])
    chp = (Path(f"/proc/{(hub.state / 'proxy.pid').read_text().strip()}/cmdline").read_bytes().split(b"\0"))
    proxy_port = int(chp[chp.index(b"--port") + 1])  # configurable-http-proxy behind the layer
    # the host's side of the project network (containers: the bridge's gateway address), with a
    # listener of its own on each address; the sandbox's island has no host side
    side = []
    for address in hub.island_host_addresses("lung-screening"):
        srv = socket.socket()
        srv.bind((address, 0))
        srv.listen()
        side.append(srv)
    targets = [("127.0.0.1", p) for p in (host_listener, hub_port, proxy_api_port, proxy_port)]
    targets += [s.getsockname() for s in side]
    try:
        result = inside(k, f"""
import socket
result = {{}}
for host, port in {targets!r}:
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect((host, port)); result[f"{{host}}:{{port}}"] = "connected"
    except OSError as e:
        result[f"{{host}}:{{port}}"] = type(e).__name__
""")
        assert set(result.values()) == {"ConnectionRefusedError"}, result
        # the listeners really were there: the host itself reaches them
        for address in [("127.0.0.1", host_listener)] + [s.getsockname() for s in side]:
            with socket.create_connection(address, timeout=2):
                pass
    finally:
        for s in side:
            s.close()
    if hub.session_backend == "docker":
        assert side, "the project network has a host side to check"


# --- refused spawns ---------------------------------------------------------------------------
def test_cannot_start_other_projects_or_profiles_via_api(hub):
    alice, bob = hub.client("alice"), hub.client("bob")
    for c, name, body, fragment in [
        (alice, "prostate-ai", {}, "not a member"),
        (alice, "no-such-project", {}, "not a member"),
        (bob, "prostate-ai", {"profile": "large"}, "no profile 'large'"),  # lung-screening's, not bob's
        (bob, "prostate-ai", {"profile": {"cpu": 64}}, "must be a string"),
    ]:
        r = c.api("POST", f"/users/{c.username}/servers/{name}", json=body)
        assert r.status_code in (400, 403), (name, body, r.status_code, r.text)
        assert fragment in r.json()["message"], r.json()
    # Refusals leave nothing running and nothing behind.
    assert alice.server_state("prostate-ai") is None and bob.server_state("prostate-ai") is None
    assert not hub.island_exists("prostate-ai")


def test_cannot_start_other_projects_via_form(hub):
    c = hub.client("alice")
    r = c.http.get(f"{hub.url}/hub/spawn/alice/prostate-ai", timeout=10)
    assert "not a member" in r.text
    r = c.http.post(f"{hub.url}/hub/spawn/alice/prostate-ai", data={"profile": "small", "_xsrf": c.http.cookies["_xsrf"]},
                    timeout=30)
    # JupyterHub shows the form again with the refusal as its error message; nothing is started.
    assert r.status_code == 403 and "spawn-error-msg" in r.text
    assert "Error: HTTP 403: error (you are not a member of a project named &#39;prostate-ai&#39;)" in r.text
    assert c.server_state("prostate-ai") is None


def test_form_starts_the_chosen_profile(hub):
    c = hub.client("bob")
    hub.vre("project", "set-profile", "prostate-ai", "big", "--cpu", "1", "--memory", "3G")
    r = c.http.post(f"{hub.url}/hub/spawn/bob/prostate-ai", data={"profile": "big", "_xsrf": c.http.cookies["_xsrf"]},
                    timeout=60)
    assert r.status_code == 200 and "spawn-error-msg" not in r.text
    c.wait_ready("prostate-ai")
    assert (hub.cgroup("bob-prostate-ai", "memory") / "memory.limit_in_bytes").read_text().strip() == str(3 * 1024**3)
    c.stop("prostate-ai")
    hub.vre("project", "remove-profile", "prostate-ai", "big")


def test_options_cannot_widen_the_plan(hub):
    """Extra user options (datasets, cpu, mounts) are ignored: the plan comes from the database."""
    c = hub.client("bob")
    body = {"profile": "small", "datasets": ["lung-ct-screening"], "cpu": 64, "mem": "100G",
            "volumes": {"/": "/host"}}
    r = c.api("POST", "/users/bob/servers/prostate-ai", json=body)
    assert r.status_code in (201, 202), r.text
    c.wait_ready("prostate-ai")
    k = c.kernel("prostate-ai")
    try:
        result = inside(k, """
import os
result = {"data": sorted(os.listdir("/data")), "host": os.path.exists("/host"),
          "threads": os.environ["OMP_NUM_THREADS"], "profile": os.environ["VRE_PROFILE"]}
""")
    finally:
        k.close()
    assert result == {"data": ["prostate-mri"], "host": False, "threads": "1", "profile": "small"}
    cg = hub.cgroup("bob-prostate-ai", "memory") / "memory.limit_in_bytes"
    if cg.exists():
        assert int(cg.read_text()) == 2 * 1024**3
    c.stop("prostate-ai")


def test_default_server_is_refused(hub):
    c = hub.client("alice")
    r = c.api("POST", "/users/alice/server", json={})
    assert r.status_code == 403 and "choose a project" in r.json()["message"]


def test_auditor_gets_no_session(hub):
    c = hub.client("auditor")
    r = c.api("POST", "/users/auditor/servers/lung-screening", json={})
    assert r.status_code == 403


# --- limits -----------------------------------------------------------------------------------
def test_memory_hog_is_killed_and_hub_keeps_serving(hub):
    hub.vre("project", "create", "memtest", "--title", "Memory limit test")
    hub.vre("project", "add-member", "memtest", "alice")
    hub.vre("project", "set-profile", "memtest", "tiny", "--cpu", "1", "--memory", "400M")
    c = hub.client("alice")
    c.start("memtest")
    k = c.kernel("memtest")
    try:
        with pytest.raises((KernelDied, HubError)):
            k.run("blocks = []\nwhile True: blocks.append(b'x' * (64 * 1024 * 1024))", timeout=60)
        assert requests.get(f"{hub.url}/hub/api", timeout=5).status_code == 200
        assert c.server_state("memtest")["ready"]  # the server survived, only the kernel died
        k2 = c.kernel("memtest")
        assert k2.check("print(6 * 7)").strip() == "42"
        k2.close()
        oom = hub.cgroup("alice-memtest", "memory") / "memory.oom_control"
        if oom.exists():
            assert "oom_kill 0" not in oom.read_text()
    finally:
        k.ws.close()
        c.stop("memtest")


# --- lifecycle --------------------------------------------------------------------------------
def test_stop_cleans_up(hub):
    c = hub.client("bob")
    c.start("prostate-ai")
    assert hub.session_exists("bob-prostate-ai") and hub.island_exists("prostate-ai")
    c.stop("prostate-ai")
    assert not hub.session_exists("bob-prostate-ai")
    assert not (hub.state.parent / "run" / "sessions" / "bob-prostate-ai").exists()
    assert not hub.island_exists("prostate-ai")


def test_removed_member_is_stopped_and_refused(hub):
    hub.vre("user", "add", "carol", "--password-stdin", input="carol-password-1\n")
    hub.vre("project", "add-member", "lung-screening", "carol")
    alice = hub.client("alice")
    if alice.server_state("lung-screening") is None:
        alice.start("lung-screening")
    for path, text in (("project/from-alice.txt", "shared"), ("private-alice.txt", "private")):
        r = alice.server_api("lung-screening", "PUT", f"/contents/{path}", json={"type": "file", "format": "text",
                                                                               "content": text})
        assert r.status_code in (200, 201), r.text
    c = hub.client("carol", "carol-password-1")
    c.start("lung-screening")
    k = c.kernel("lung-screening")
    # a second member shares the workspace (and may edit alice's files there) but not alice's home
    shared = inside(k, "import os\nopen('/home/jovyan/project/from-alice.txt', 'a').write(' + carol')\n"
                       "result = [open('/home/jovyan/project/from-alice.txt').read(), "
                       "os.path.exists('/home/jovyan/private-alice.txt')]")
    k.ws.close()
    assert shared == ["shared + carol", False]
    hub.vre("project", "remove-member", "lung-screening", "carol")
    deadline = time.monotonic() + 30
    while c.server_state("lung-screening") is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert c.server_state("lung-screening") is None
    assert not hub.session_exists("carol-lung-screening")
    r = c.api("POST", "/users/carol/servers/lung-screening", json={})
    assert r.status_code == 403 and "not a member" in r.json()["message"]


def test_expired_project_is_stopped_and_refused(hub):
    hub.vre("project", "create", "shortlived", "--title", "Permit ends soon")
    hub.vre("project", "add-member", "shortlived", "bob")
    hub.vre("project", "set-profile", "shortlived", "small", "--cpu", "0.5", "--memory", "1G")
    c = hub.client("bob")
    c.start("shortlived")
    hub.vre("project", "set-expiry", "shortlived", "2020-01-01T00:00:00+00:00")
    deadline = time.monotonic() + 30
    while c.server_state("shortlived") is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert c.server_state("shortlived") is None
    r = c.api("POST", "/users/bob/servers/shortlived", json={})
    assert r.status_code == 403 and "expired" in r.json()["message"]
    home = requests.get(f"{hub.url}/hub/home", cookies=c.http.cookies, timeout=10).text
    assert "permit expired" in home


def test_sessions_survive_hub_restart(hub):
    c = hub.client("alice")
    if c.server_state("lung-screening") is None:
        c.start("lung-screening")
    k = c.kernel("lung-screening")
    k.check("survivor = 42")
    k.ws.close()
    hub.restart()  # kill -9, then start again
    c = hub.client("alice")
    assert c.server_state("lung-screening")["ready"]
    k2 = type(k)(c, "lung-screening", k.id)  # reconnect to the same kernel
    assert k2.check("print(survivor)").strip() == "42"
    k2.close()
    c.stop("lung-screening")
    assert not hub.session_exists("alice-lung-screening")


def test_spawn_progress_is_reported(hub):
    """The spawn page's progress bar reads this event stream; our steps must appear in it."""
    import threading

    c = hub.client("bob")
    t = threading.Thread(target=lambda: c.api("POST", "/users/bob/servers/prostate-ai", json={}), daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while (c.server_state("prostate-ai") or {}).get("pending") != "spawn" and time.monotonic() < deadline:
        time.sleep(0.02)
    r = c.api("GET", "/users/bob/servers/prostate-ai/progress", stream=True, timeout=90)
    messages = []
    for line in r.iter_lines(decode_unicode=True):
        if line and line.startswith("data:"):
            event = json.loads(line[5:])
            messages.append(event.get("message", ""))
            if event.get("ready") or event.get("failed"):
                break
    t.join(30)
    text = "\n".join(messages)
    assert "network island" in text, text
    assert ("Starting the container" if hub.session_backend == "docker" else "Starting the sandbox") in text, text
    # CPU and memory of the profile (1 CPU, 2G) are in the session's cgroup
    quota = hub.cgroup("bob-prostate-ai", "cpu") / "cpu.cfs_quota_us"
    if quota.exists():
        assert int(quota.read_text()) == 100_000
    c.stop("prostate-ai")
