"""Probe: can the host observe dataset reads made inside a bubblewrap sandbox, and attribute them?

Run as root: ``python3 docs/probes/fanotify_probe.py``. Light: a 30-file dataset in /tmp, one
sandbox (unprivileged uid, user/pid namespaces like sandbox_argv renders), a v1 pids cgroup; all
removed at the end. Prints one line per question.

Groups (each a separate fanotify group, FAN_CLASS_NOTIF, fd-reporting unless said):
  host-mount  FAN_MARK_MOUNT on the host's bind mount of the dataset
  fs          FAN_MARK_FILESYSTEM on the dataset's filesystem (here: the root ext4)
  sbx-mount   FAN_MARK_MOUNT on the sandbox's own bind mount, via /proc/<pid>/root/data/ds
  sbx-pidfd   as sbx-mount, with FAN_REPORT_PIDFD (PIDFD_GET_INFO on each pidfd)
  sbx-fid     as sbx-mount, FAN_REPORT_DFID_NAME (no fd per event)
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]

FAN_CLOEXEC, FAN_NONBLOCK, FAN_UNLIMITED_QUEUE = 0x1, 0x2, 0x10
FAN_REPORT_PIDFD, FAN_REPORT_TID, FAN_REPORT_FID = 0x80, 0x100, 0x200
FAN_REPORT_DIR_FID, FAN_REPORT_NAME, FAN_REPORT_TARGET_FID = 0x400, 0x800, 0x1000
FAN_REPORT_FD_ERROR, FAN_REPORT_MNT = 0x2000, 0x4000
FAN_MARK_ADD, FAN_MARK_MOUNT, FAN_MARK_FILESYSTEM = 0x1, 0x10, 0x100
FAN_ACCESS, FAN_OPEN, FAN_OPEN_EXEC, FAN_ONDIR = 0x1, 0x20, 0x1000, 0x40000000
AT_FDCWD = -100
O_RDONLY, O_LARGEFILE = 0, 0o100000
META = struct.Struct("=IBBHQii")  # fanotify_event_metadata: event_len vers reserved metadata_len mask fd pid
PIDFD_GET_INFO = 0xC040FF0B       # _IOWR(0xFF, 11, struct pidfd_info) with the 64-byte v0 struct
PIDFD_INFO_PID, PIDFD_INFO_CREDS, PIDFD_INFO_CGROUPID, PIDFD_INFO_EXIT = 1, 2, 4, 8
UID = 277777


def init(flags: int) -> int:
    fd = libc.fanotify_init(FAN_CLOEXEC | FAN_NONBLOCK | flags, O_RDONLY | O_LARGEFILE)
    if fd < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return fd


def mark(fd: int, flags: int, mask: int, path: str) -> None:
    if libc.fanotify_mark(fd, FAN_MARK_ADD | flags, mask, AT_FDCWD, path.encode()) < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def fdinfo_mnt_id(fd: int) -> int | None:
    for line in open(f"/proc/self/fdinfo/{fd}"):
        if line.startswith("mnt_id:"):
            return int(line.split()[1])
    return None


def pidfd_info(pidfd: int) -> dict:
    buf = bytearray(64)
    struct.pack_into("=Q", buf, 0, PIDFD_INFO_PID | PIDFD_INFO_CREDS | PIDFD_INFO_CGROUPID | PIDFD_INFO_EXIT)
    arr = (ctypes.c_char * 64).from_buffer(buf)
    if libc.ioctl(pidfd, PIDFD_GET_INFO, arr) < 0:
        return {"error": os.strerror(ctypes.get_errno())}
    mask, cgroupid = struct.unpack_from("=QQ", buf, 0)
    pid, tgid, ppid, ruid = struct.unpack_from("=IIII", buf, 16)
    exit_code = struct.unpack_from("=i", buf, 60)[0]
    return {"mask": mask, "cgroupid": cgroupid, "pid": pid, "ruid": ruid,
            "exit": exit_code if mask & PIDFD_INFO_EXIT else None}


def proc_view(pid: int) -> dict:
    out = {}
    try:
        out["cgroup"] = [l for l in open(f"/proc/{pid}/cgroup").read().split() if ":pids:" in l][0]
        out["netns"] = os.readlink(f"/proc/{pid}/ns/net")
        out["mntns"] = os.readlink(f"/proc/{pid}/ns/mnt")
    except (OSError, IndexError) as e:
        out["gone"] = type(e).__name__
    return out


def drain(fd: int, name: str, *, fid: bool = False) -> list[dict]:
    events = []
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return events
        off = 0
        while off + META.size <= len(data):
            event_len, _v, _r, meta_len, mask, efd, pid = META.unpack_from(data, off)
            ev = {"mask": mask, "pid": pid}
            info = data[off + meta_len: off + event_len]
            if efd >= 0:
                try:
                    ev["path"] = os.readlink(f"/proc/self/fd/{efd}")
                    ev["mnt_id"] = fdinfo_mnt_id(efd)
                finally:
                    os.close(efd)
            i = 0
            while i + 4 <= len(info):
                itype, _pad, ilen = struct.unpack_from("=BBH", info, i)
                if itype == 4:  # FAN_EVENT_INFO_TYPE_PIDFD
                    pidfd = struct.unpack_from("=i", info, i + 4)[0]
                    ev["pidfd"] = pidfd if pidfd < 0 else "ok"
                    if pidfd >= 0:
                        ev["pidfd_info"] = pidfd_info(pidfd)
                        os.close(pidfd)
                elif itype in (1, 2, 3):  # FID, DFID_NAME, DFID
                    ev["fid_type"] = itype
                    if itype == 2:  # name after fsid(8) + file_handle(8 + handle_bytes)
                        hb = struct.unpack_from("=I", info, i + 12)[0]
                        ev["name"] = info[i + 20 + hb: i + ilen].split(b"\0")[0].decode()
                i += ilen or len(info)
            ev["proc"] = proc_view(pid)
            events.append(ev)
            off += event_len


def main() -> None:
    kernel = os.uname().release
    print(f"kernel {kernel}; /proc/sys/fs/fanotify: " + ", ".join(
        f"{n}={open('/proc/sys/fs/fanotify/' + n).read().strip()}" for n in sorted(os.listdir('/proc/sys/fs/fanotify'))))
    # 1. which init flags this kernel takes
    for name, flags in [("FAN_REPORT_FID", FAN_REPORT_FID), ("FAN_REPORT_DFID_NAME", FAN_REPORT_DIR_FID | FAN_REPORT_NAME),
                        ("FAN_REPORT_DFID_NAME_TARGET", FAN_REPORT_FID | FAN_REPORT_DIR_FID | FAN_REPORT_NAME | FAN_REPORT_TARGET_FID),
                        ("FAN_REPORT_PIDFD", FAN_REPORT_PIDFD), ("FAN_REPORT_TID", FAN_REPORT_TID),
                        ("FAN_UNLIMITED_QUEUE", FAN_UNLIMITED_QUEUE), ("FAN_REPORT_FD_ERROR", FAN_REPORT_FD_ERROR),
                        ("FAN_REPORT_MNT", FAN_REPORT_MNT)]:
        try:
            os.close(init(flags))
            print(f"init {name}: ok")
        except OSError as e:
            print(f"init {name}: {e}")

    base = tempfile.mkdtemp(prefix="vre-fanprobe-")
    os.chmod(base, 0o755)
    ds = os.path.join(base, "ds")
    os.makedirs(os.path.join(ds, "series1"))
    for i in range(30):
        with open(os.path.join(ds, "series1", f"{i:03}.dcm"), "wb") as f:
            f.write(b"x" * 1024)
    subprocess.run(["chmod", "-R", "a+rX", ds], check=True)
    subprocess.run(["mount", "--bind", ds, ds], check=True)  # the dataset is its own mount on the host
    cg = f"/sys/fs/cgroup/pids/vre-fanprobe-{os.getpid()}"
    os.mkdir(cg)
    groups: dict[str, int] = {}
    proc = None
    try:
        groups["host-mount"] = init(0)
        mark(groups["host-mount"], FAN_MARK_MOUNT, FAN_OPEN, ds)
        groups["fs"] = init(0)
        mark(groups["fs"], FAN_MARK_FILESYSTEM, FAN_OPEN, ds)

        # the sandbox: setpriv to an unprivileged uid, bwrap as sandbox_argv renders it (no netns)
        info_r, info_w = os.pipe()
        block_r, block_w = os.pipe()
        script = ("sleep 300 < /data/ds/series1/000.dcm & "      # a long-lived reader (alive when we look)
                  "for f in /data/ds/series1/*.dcm; do cat $f > /dev/null; done; "  # 30 short-lived readers
                  # a researcher's own user+mount namespace with a new bind of the dataset: one more read
                  "mkdir /tmp/x && unshare -Urm sh -c 'mount --bind /data/ds /tmp/x && cat /tmp/x/series1/001.dcm' "
                  ">/dev/null 2>&1 && echo 'nested bind mount made and read' >&2; "
                  "sleep 3")
        argv = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", "--inh-caps=-all",
                "--bounding-set=-all", "--no-new-privs", "--",
                "bwrap", "--unshare-user", "--uid", "1000", "--gid", "100", "--unshare-pid", "--unshare-ipc",
                "--unshare-uts", "--new-session", "--cap-drop", "ALL", "--die-with-parent",
                "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
                "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
                "--ro-bind", ds, "/data/ds", "--remount-ro", "/",
                "--info-fd", str(info_w), "--block-fd", str(block_r), "--", "/bin/sh", "-c", script]
        proc = subprocess.Popen(argv, pass_fds=(info_w, block_r),
                                preexec_fn=lambda: open(f"{cg}/cgroup.procs", "w").write("0"))
        os.close(info_w)
        raw = b""
        while b"}" not in raw:  # bwrap writes the info JSON in pieces
            raw += os.read(info_r, 4096)
        info = json.loads(raw.decode())
        child = info["child-pid"]
        inner = f"/proc/{child}/root/data/ds"
        # info-fd is written before the child has made its mounts; --block-fd holds it after them:
        # wait until its mountinfo lists the dataset
        t0 = time.monotonic()
        while not any(l.split()[4] == "/data/ds" for l in open(f"/proc/{child}/mountinfo")):
            time.sleep(0.002)
        print(f"sandbox mounts ready {1000 * (time.monotonic() - t0):.1f} ms after info-fd; sandbox still blocked")
        # the sandbox has its mounts but runs nothing yet (--block-fd): mark its own bind mount
        groups["sbx-mount"] = init(0)
        mark(groups["sbx-mount"], FAN_MARK_MOUNT, FAN_OPEN, inner)
        groups["sbx-pidfd"] = init(FAN_REPORT_PIDFD)
        mark(groups["sbx-pidfd"], FAN_MARK_MOUNT, FAN_OPEN, inner)
        try:
            groups["sbx-fid"] = init(FAN_REPORT_DIR_FID | FAN_REPORT_NAME)
            mark(groups["sbx-fid"], FAN_MARK_MOUNT, FAN_OPEN, inner)
        except OSError as e:
            print(f"sbx-fid: FAN_MARK_MOUNT with FAN_REPORT_DFID_NAME: {e}")
            groups.pop("sbx-fid", None)
        mnt_ids = {}
        for line in open(f"/proc/{child}/mountinfo"):
            f = line.split()
            if f[4] == "/data/ds":
                mnt_ids["sandbox"] = int(f[0])
        for line in open("/proc/self/mountinfo"):
            f = line.split()
            if f[4] == ds:
                mnt_ids["host"] = int(f[0])
        print(f"mount ids: {mnt_ids}; sandbox init pid {child}; sandbox pids cgroup {cg}")
        os.write(block_w, b"x")  # let the sandbox run
        # the host reads one file too (e.g. the hub indexing the catalogue)
        time.sleep(2.0)  # the 30 cats have exited by now; the sleeper is alive
        open(os.path.join(ds, "series1", "029.dcm"), "rb").read()
        time.sleep(0.2)
        for name, fd in groups.items():
            evs = [e for e in drain(fd, name) if "/series1/" in e.get("path", "/series1/")]
            from_sbx = [e for e in evs if e.get("mnt_id") == mnt_ids.get("sandbox") or "fid_type" in e]
            from_host = [e for e in evs if e.get("mnt_id") == mnt_ids.get("host")]
            other = [e for e in evs if "mnt_id" in e and e["mnt_id"] not in mnt_ids.values()]
            alive = [e for e in evs if "gone" not in e["proc"]]
            print(f"{name}: {len(evs)} events on the dataset (sandbox mount {len(from_sbx)}, host mount "
                  f"{len(from_host)}, another mount {len(other)}); /proc/<pid> still there for {len(alive)}")
            for e in other:
                print("   via another mount:", json.dumps(e, sort_keys=True))
            for e in ([alive[0]] if alive else []) + [x for x in evs if "gone" in x["proc"]][:1]:
                print("   e.g.", json.dumps(e, sort_keys=True))
    finally:
        if proc is not None:
            for pid in open(f"{cg}/cgroup.procs").read().split():  # only the probe's own sandbox
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
            proc.wait()
        for fd in groups.values():
            os.close(fd)
        subprocess.run(["umount", ds])
        for _ in range(50):
            try:
                os.rmdir(cg)
                break
            except OSError:
                time.sleep(0.1)
        shutil.rmtree(base)


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("run as root")
    main()
