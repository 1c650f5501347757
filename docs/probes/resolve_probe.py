"""Probe: can the host resolve a session's file path the way the session sees it, without trusting it?

Run as root: ``python3 docs/probes/resolve_probe.py``. A sandbox (as sandbox_argv renders it) gets a
dataset at /data/ds and a home with researcher-made links: ``data -> /data`` (as the guard makes),
``innocent.txt -> /data/ds/a.dcm``, ``sub/up -> ../../../data/ds`` and a copy ``copy.dcm``. The host
opens /proc/<sandbox pid>/root with O_PATH and resolves each URL path with
openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS), then asks fdinfo for the mount id and compares it
with the sandbox's dataset mount (from its mountinfo). Prints one line per path, and the cost.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import subprocess
import tempfile
import time

libc = ctypes.CDLL(None, use_errno=True)
SYS_openat2 = 437
RESOLVE_NO_MAGICLINKS, RESOLVE_IN_ROOT = 0x02, 0x10
O_PATH, O_RDONLY, O_CLOEXEC = 0o10000000, 0, 0o2000000
UID = 277777


def openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    how = struct.pack("QQQ", flags, 0, resolve)
    fd = libc.syscall(SYS_openat2, dirfd, path.encode(), how, len(how))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return fd


def mnt_id(fd: int) -> int:
    for line in open(f"/proc/self/fdinfo/{fd}"):
        if line.startswith("mnt_id:"):
            return int(line.split()[1])
    raise RuntimeError("no mnt_id")


def main() -> None:
    base = tempfile.mkdtemp(prefix="vre-resolve-")
    os.chmod(base, 0o755)
    ds, home = os.path.join(base, "ds"), os.path.join(base, "home")
    os.makedirs(ds)
    os.makedirs(os.path.join(home, "sub"))
    with open(os.path.join(ds, "a.dcm"), "wb") as f:
        f.write(b"\0" * 128 + b"DICM" + b"\0" * 64)
    shutil.copy(os.path.join(ds, "a.dcm"), os.path.join(home, "copy.dcm"))
    os.symlink("/data", os.path.join(home, "data"))
    os.symlink("/data/ds/a.dcm", os.path.join(home, "innocent.txt"))
    os.symlink("../../../data/ds", os.path.join(home, "sub", "up"))
    subprocess.run(["chown", "-R", f"{UID}:{UID}", home], check=True)
    subprocess.run(["chmod", "-R", "a+rX", ds], check=True)
    argv = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--no-new-privs", "--",
            "bwrap", "--unshare-user", "--uid", "1000", "--gid", "100", "--unshare-pid", "--die-with-parent",
            "--cap-drop", "ALL", "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
            "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--proc", "/proc",
            "--ro-bind", ds, "/data/ds", "--bind", home, "/home/jovyan", "--remount-ro", "/",
            "--", "/bin/sleep", "30"]
    proc = subprocess.Popen(argv)
    try:
        child = None
        for _ in range(200):
            kids = open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()
            if kids and any(l.split()[4] == "/home/jovyan" for l in open(f"/proc/{kids[0]}/mountinfo")):
                child = int(kids[0])
                break
            time.sleep(0.01)
        data_mounts = {int(l.split()[0]) for l in open(f"/proc/{child}/mountinfo") if l.split()[4].startswith("/data/")}
        root = os.open(f"/proc/{child}/root", O_PATH | O_CLOEXEC)
        for url_path in ("data/ds/a.dcm", "innocent.txt", "sub/up/a.dcm", "copy.dcm", "../../data/ds/a.dcm",
                         "data/../../../usr/bin/env", "../../proc/1/root/data/ds/a.dcm"):
            try:
                # a URL path is relative to the server's root_dir (/home/jovyan), as the contents manager joins it
                fd = openat2(root, "home/jovyan/" + url_path.lstrip("/"), O_RDONLY | O_CLOEXEC,
                             RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
            except OSError as e:
                print(f"{url_path:32s} -> {e.strerror}")
                continue
            real = os.readlink(f"/proc/self/fd/{fd}")
            head = os.pread(fd, 132, 0)
            print(f"{url_path:32s} -> {real:28s} dataset mount: {mnt_id(fd) in data_mounts}; "
                  f"DICM magic: {head[128:132] == b'DICM'}")
            os.close(fd)
        t = time.perf_counter()
        for _ in range(2000):
            fd = openat2(root, "home/jovyan/sub/up/a.dcm", O_RDONLY | O_CLOEXEC, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
            mnt_id(fd)
            os.close(fd)
        print(f"cost: {(time.perf_counter() - t) / 2000 * 1e6:.1f} us per resolve + fdinfo (Python)")
        os.close(root)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
