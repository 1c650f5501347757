"""Probe: what one process of a session sandbox can do to another (the "server" and a "kernel").

Run as root: ``python3 docs/probes/sandbox_probe.py``. It renders a sandbox as ``sandbox_argv``
does (setpriv to an unprivileged uid and gid, no capabilities, no_new_privs; bwrap with new user,
pid, ipc and uts namespaces, --cap-drop ALL, --new-session, a read-only root), without the network
namespace, and runs this same file inside with ``inside``. Inside, a "server" (dumpable as today),
a "hardened server" (prctl(PR_SET_DUMPABLE, 0)) and a "kernel" (a child of the server, as
jupyter_server starts kernels) are started; the kernel attacks both. Then the socket questions:
the server listens on a unix socket in the bound session directory, as today (owned by the
session uid, 0700), and the kernel tries to replace it; then the hub-side lock (the directory
root-owned 0755, the socket chowned to the layer) is applied from outside and the kernel tries
again. A seccomp filter (bwrap --seccomp) and --disable-userns are tried last. Everything it
creates is removed.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

UID = 277777
SECRET = "vre-probe-secret-0123456789"
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_DUMPABLE, PR_GET_DUMPABLE = 4, 3
PTRACE_ATTACH, PTRACE_DETACH = 16, 17
SYS_ptrace, SYS_process_vm_readv, SYS_pidfd_open, SYS_pidfd_getfd = 101, 310, 434, 438
CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000


def err(call) -> str:
    try:
        r = call()
        return "ok" if r is None or r is True else f"ok ({r})"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def check(ret: int) -> int:
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return ret


# --- attacks, run by the "kernel" -------------------------------------------------------------
def first_readable(pid: int) -> tuple[int, int]:
    for line in open(f"/proc/{pid}/maps"):
        addr, perms = line.split()[:2]
        if perms.startswith("r"):
            start = int(addr.split("-")[0], 16)
            return start, 64
    raise OSError(errno.EACCES, "no maps")


def attacks(pid: int) -> dict:
    out = {}

    def mem():
        try:
            start, n = first_readable(pid)
        except OSError:
            start, n = 0x400000, 64
        with open(f"/proc/{pid}/mem", "rb") as f:
            f.seek(start)
            return f"{len(f.read(n))} bytes"

    out["read /proc/pid/mem"] = err(mem)
    out["read /proc/pid/environ"] = err(lambda: "secret seen" if SECRET in open(f"/proc/{pid}/environ").read() else "no secret")

    def ptrace():
        check(libc.syscall(SYS_ptrace, PTRACE_ATTACH, pid, 0, 0))
        os.waitpid(pid, 0)  # the tracee stops
        libc.syscall(SYS_ptrace, PTRACE_DETACH, pid, 0, 0)
    out["ptrace(ATTACH)"] = err(ptrace)

    def vm_readv():
        buf = ctypes.create_string_buffer(16)
        try:
            start, _ = first_readable(pid)
        except OSError:
            start = 0x400000
        local = struct.pack("PN", ctypes.addressof(buf), 16)
        remote = struct.pack("PN", start, 16)
        lb, rb = ctypes.create_string_buffer(local), ctypes.create_string_buffer(remote)
        return check(libc.syscall(SYS_process_vm_readv, pid, lb, 1, rb, 1, 0))
    out["process_vm_readv"] = err(vm_readv)

    def getfd():
        pidfd = check(libc.syscall(SYS_pidfd_open, pid, 0))
        try:
            os.close(check(libc.syscall(SYS_pidfd_getfd, pidfd, 3, 0)))
        finally:
            os.close(pidfd)
    out["pidfd_getfd(its listening socket)"] = err(getfd)
    out["readlink /proc/pid/cwd"] = err(lambda: os.readlink(f"/proc/{pid}/cwd"))
    out["kill(SIGSTOP)+kill(SIGCONT)"] = err(lambda: (os.kill(pid, signal.SIGSTOP), os.kill(pid, signal.SIGCONT)) and None)
    return out


def nested_userns_attack(pid: int) -> dict:
    """A kernel makes itself root of a new user namespace (full capabilities there), then tries again."""
    r = {}
    try:
        check(libc.unshare(CLONE_NEWUSER))
        r["unshare(CLONE_NEWUSER)"] = "ok"
    except OSError as e:
        return {"unshare(CLONE_NEWUSER)": errno.errorcode[e.errno]}
    r.update({f"then {k}": v for k, v in attacks(pid).items() if k in ("read /proc/pid/mem", "ptrace(ATTACH)")})
    return r


# --- inside the sandbox ---------------------------------------------------------------------------
def serve(path: str, answer: bytes, dumpable: bool, ready) -> None:
    if not dumpable:
        check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0))
    s = socket.socket(socket.AF_UNIX)
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        s.bind(path)
        s.listen(8)
    if s.fileno() != 3:
        os.dup2(s.fileno(), 3)
    os.write(ready, b"x")
    while True:
        if not path:
            time.sleep(60)
            continue
        c, _ = s.accept()
        c.sendall(answer)
        c.close()


def spawn_server(path: str, answer: bytes, dumpable: bool) -> int:
    r, w = os.pipe()
    os.set_inheritable(w, True)
    pid = os.fork()
    if pid == 0:
        os.environ["VRE_SERVER_SECRET"] = SECRET
        os.execve(sys.executable, [sys.executable, __file__, "serve", path, answer.decode(), str(int(dumpable)), str(w)],
                  {**os.environ, "VRE_SERVER_SECRET": SECRET})
    os.read(r, 1)
    return pid


def inside() -> None:
    print(json.dumps({"uid": os.getuid(), "dumpable": libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0),
                      "yama": os.path.exists("/proc/sys/kernel/yama/ptrace_scope"),
                      "NoNewPrivs": [l.split()[1] for l in open("/proc/self/status") if l.startswith("NoNewPrivs")][0],
                      "CapEff": [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]}))
    plain = spawn_server("", b"", True)
    hardened = spawn_server("", b"", False)
    results = {}
    for name, pid in (("server as today (dumpable)", plain), ("server with PR_SET_DUMPABLE=0", hardened)):
        # the "kernel": a separate process of the same uid (forked here, as jupyter_server forks kernels)
        r, w = os.pipe()
        k = os.fork()
        if k == 0:
            os.close(r)
            res = attacks(pid)
            res.update(nested_userns_attack(pid))
            os.write(w, json.dumps(res).encode())
            os._exit(0)
        os.close(w)
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
        os.waitpid(k, 0)
        results[name] = json.loads(data)
    print(json.dumps(results, indent=1))
    for pid in (plain, hardened):
        os.kill(pid, signal.SIGKILL)


def socket_inside(sock_dir: str) -> None:
    """In one sandbox, driven line by line from the host: the server binds its socket in the bound
    session directory; a kernel moves it aside and binds an impostor; after the host has locked the
    directory, the kernel tries again."""
    path = os.path.join(sock_dir, "jupyter.sock")
    spawn_server(path, b"server", True)
    print("READY", flush=True)
    sys.stdin.readline()
    k = os.fork()
    if k == 0:  # the kernel, today
        os.rename(path, path + ".old")
        spawn_server(path, b"impostor", True)
        os._exit(0)
    os.waitpid(k, 0)
    print("REPLACED", flush=True)
    sys.stdin.readline()  # the host has put the real socket back and locked the directory
    res = {}
    res["rename(socket aside)"] = err(lambda: os.rename(path, path + ".old"))
    res["unlink(socket)"] = err(lambda: os.unlink(path))

    def impostor():
        s = socket.socket(socket.AF_UNIX)
        s.bind(os.path.join(sock_dir, "impostor.sock"))
    res["bind a new socket in the directory"] = err(impostor)
    res["chmod(socket, 0777)"] = err(lambda: os.chmod(path, 0o777))

    def connect():
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        return s.recv(16).decode()
    res["connect(socket) from inside"] = err(connect)
    r, w = os.pipe()
    k = os.fork()
    if k == 0:  # a kernel that makes its own user+mount namespace and mounts over the directory
        def overmount():
            uid, gid = os.getuid(), os.getgid()
            check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS))
            open("/proc/self/setgroups", "w").write("deny")
            open("/proc/self/uid_map", "w").write(f"0 {uid} 1")
            open("/proc/self/gid_map", "w").write(f"0 {gid} 1")
            check(libc.mount(b"none", sock_dir.encode(), b"tmpfs", 0, None))
            s = socket.socket(socket.AF_UNIX)
            s.bind(path)
            s.listen(1)
            os.write(w, b"ok: impostor bound in the kernel's own mount namespace")
            time.sleep(3)
        r2 = err(overmount)
        if r2 != "ok":
            os.write(w, r2.encode())
        os._exit(0)
    res["unshare(user+mount), mount tmpfs over the directory, bind there"] = os.read(r, 100).decode()
    print(json.dumps(res), flush=True)
    sys.stdin.readline()
    os.kill(k, signal.SIGKILL)


# --- outside: the host ----------------------------------------------------------------------------
def bwrap_argv(binds: list[tuple[str, str, bool]], *extra: str) -> list[str]:
    bw = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", "--inh-caps=-all",
          "--bounding-set=-all", "--no-new-privs", "--",
          "bwrap", "--unshare-user", "--uid", "1000", "--gid", "100", "--unshare-pid", "--unshare-ipc",
          "--unshare-uts", "--new-session", "--cap-drop", "ALL", "--die-with-parent",
          "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
          "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
          "--ro-bind", __file__, "/probe.py", *extra]
    for src, dst, ro in binds:
        bw += ["--ro-bind" if ro else "--bind", src, dst]
    return bw + ["--remount-ro", "/", "--", "/usr/bin/python3", "/probe.py"]


def host_connect(path: str) -> str:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        return s.recv(16).decode() or "(empty)"
    except OSError as e:
        return errno.errorcode[e.errno]
    finally:
        s.close()


def seccomp_filter() -> bytes:
    """A classic-BPF seccomp program: EPERM for ptrace, process_vm_readv/writev, pidfd_getfd; allow the rest."""
    AUDIT_ARCH_X86_64, RET_ALLOW, RET_ERRNO, RET_KILL = 0xC000003E, 0x7FFF0000, 0x00050000, 0
    ins = [(0x20, 0, 0, 4), (0x15, 1, 0, AUDIT_ARCH_X86_64), (0x06, 0, 0, RET_KILL), (0x20, 0, 0, 0)]
    denied = [101, 310, 311, 438]
    for i, nr in enumerate(denied):
        ins.append((0x15, len(denied) - i, 0, nr))
    ins += [(0x06, 0, 0, RET_ALLOW), (0x06, 0, 0, RET_ERRNO | errno.EPERM)]
    return b"".join(struct.pack("HBBI", *i) for i in ins)


def outside() -> None:
    print("host: kernel.yama.ptrace_scope", "present" if os.path.exists("/proc/sys/kernel/yama/ptrace_scope") else "absent (Yama not built in)")
    print("== (b) process attacks inside one sandbox")
    print(subprocess.run(bwrap_argv([]) + ["inside"], capture_output=True, text=True, timeout=60).stdout)

    print("== (c) the server's socket directory")
    base = tempfile.mkdtemp(prefix="vre-sockprobe-")
    os.chmod(base, 0o755)
    sock_dir = os.path.join(base, "sock")
    os.mkdir(sock_dir, 0o700)
    os.chown(sock_dir, UID, UID)  # as host.prepare_host makes a "private" mount today
    path = os.path.join(sock_dir, "jupyter.sock")
    srv = subprocess.Popen(bwrap_argv([(sock_dir, "/run/vre/session", False)]) + ["socket", "/run/vre/session"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().strip() == "READY"
        print("today: host connects ->", host_connect(path))
        srv.stdin.write("go\n"); srv.stdin.flush()
        assert srv.stdout.readline().strip() == "REPLACED"
        print("today: a kernel renamed the socket aside and bound its own; host connects ->", host_connect(path))
        os.rename(path + ".old", path)  # put the real one back, then the hub-side lock:
        os.chown(path, 0, 0)
        os.chmod(path, 0o600)
        os.chown(sock_dir, 0, 0)
        os.chmod(sock_dir, 0o755)
        print("locked (dir root:root 0755, socket root 0600): host connects ->", host_connect(path))
        srv.stdin.write("go\n"); srv.stdin.flush()
        print("locked: the kernel tries:", srv.stdout.readline().strip())
        print("locked: host connects ->", host_connect(path))
        srv.stdin.write("go\n"); srv.stdin.flush()
        srv.wait(timeout=10)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
        shutil.rmtree(base, ignore_errors=True)

    print("== (d) limits")
    r = subprocess.run(bwrap_argv([], "--disable-userns") + ["userns"], capture_output=True, text=True, timeout=30)
    print("bwrap --disable-userns: unshare(CLONE_NEWUSER) inside ->", (r.stdout or r.stderr).strip()[-200:])
    rfd, wfd = os.pipe()
    os.write(wfd, seccomp_filter())
    os.close(wfd)
    r = subprocess.run(bwrap_argv([], "--seccomp", str(rfd)) + ["inside"], capture_output=True, text=True,
                       timeout=60, pass_fds=(rfd,))
    os.close(rfd)
    print("bwrap --seccomp (deny ptrace, process_vm_readv/writev, pidfd_getfd):", r.stdout.strip()[-1500:] or r.stderr[-500:])
    try:
        abi = libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
        print("landlock ABI version:", abi if abi >= 0 else os.strerror(ctypes.get_errno()))
    except Exception as e:  # pragma: no cover
        print("landlock:", e)


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "outside"
    if cmd == "inside":
        inside()
    elif cmd == "serve":
        serve(sys.argv[2], sys.argv[3].encode(), sys.argv[4] == "1", int(sys.argv[5]))
    elif cmd == "socket":
        socket_inside(sys.argv[2])
    elif cmd == "userns":
        print(err(lambda: check(libc.unshare(CLONE_NEWUSER))))
    else:
        if os.geteuid() != 0:
            sys.exit("run as root")
        outside()
