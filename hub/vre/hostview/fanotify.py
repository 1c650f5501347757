"""A minimal ctypes binding of fanotify: one notification group, mount marks, fd-reporting events.

Only what hostview needs (docs/access-layer.md, probe (a)): ``FAN_OPEN`` of files and folders on
whole mounts, events that carry an open fd of what was opened. The fd tells the mount (``fdinfo`` ``mnt_id``, which is how an
event is attributed: readers are often gone by the time it is read) and the path as the reader saw
it (``readlink``).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import resource
import stat
import struct
import termios

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]

FAN_CLOEXEC, FAN_NONBLOCK, FAN_CLASS_NOTIF, FAN_UNLIMITED_QUEUE = 0x1, 0x2, 0x0, 0x10
FAN_MARK_ADD, FAN_MARK_REMOVE, FAN_MARK_MOUNT = 0x1, 0x2, 0x10
FAN_OPEN, FAN_Q_OVERFLOW, FAN_ONDIR = 0x20, 0x4000, 0x40000000
FAN_NOFD = -1
AT_FDCWD = -100
#: struct fanotify_event_metadata: event_len, vers, reserved, metadata_len, mask, fd, pid
META = struct.Struct("=IBBHQii")
READ_BYTES = 1 << 16
#: events one read returns at most (each is bare metadata, and each opens a descriptor here)
BATCH = READ_BYTES // META.size
#: open files the reader needs: a batch's descriptors and its own
NEEDED_FDS = BATCH + 1024


def _enough_fds() -> None:
    """Raise this process' open-file limit to ``NEEDED_FDS``: the kernel opens a descriptor in the
    reader for each event it reads out, and an event whose descriptor cannot be opened (the usual
    soft limit is 1,024) is dropped, and the read cut short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= NEEDED_FDS:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NEEDED_FDS, max(hard, NEEDED_FDS)))
    except (ValueError, OSError) as e:
        raise OSError(f"reading dataset read events needs {NEEDED_FDS} open files (a descriptor per event "
                      f"read); the limit is {soft} and cannot be raised: {e}") from None


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


_libc.statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
AT_EMPTY_PATH, STATX_TYPE, STATX_MNT_ID = 0x1000, 0x1, 0x1000
_STATX_MODE_OFFSET = 0x1c            # struct statx: __u16 stx_mode
_STATX_MNT_ID_OFFSET = 0x90          # struct statx: __u64 stx_mnt_id
_statx_buf = ctypes.create_string_buffer(256)
_statx_mode = ctypes.c_uint16.from_buffer(_statx_buf, _STATX_MODE_OFFSET)
_statx_mnt_id = ctypes.c_uint64.from_buffer(_statx_buf, _STATX_MNT_ID_OFFSET)


def mount_id(fd: int) -> int:
    """The id of the mount ``fd`` was opened through (``fdinfo``'s ``mnt_id``, in one ``statx``
    call: hostview asks it for every event). Not thread-safe (one buffer)."""
    _check(_libc.statx(fd, b"", AT_EMPTY_PATH, STATX_MNT_ID, _statx_buf), "statx")
    return _statx_mnt_id.value


def mount_and_folder(fd: int) -> tuple[int, bool]:
    """(``mount_id(fd)``, whether ``fd`` is a folder) in the same one ``statx`` call: an event's
    mask does not say whether a folder was opened (only groups that report file ids say so)."""
    _check(_libc.statx(fd, b"", AT_EMPTY_PATH, STATX_MNT_ID | STATX_TYPE, _statx_buf), "statx")
    return _statx_mnt_id.value, stat.S_ISDIR(_statx_mode.value)


class Group:
    """One fanotify notification group (non-blocking, unlimited queue)."""

    def __init__(self):
        _enough_fds()
        self.fd = _check(_libc.fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE,
                                             os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC), "fanotify_init")

    def mark_mount(self, dirfd: int) -> None:
        """Report every open, of files and of folders (a listing), on the mount that ``dirfd`` (an
        open directory of it, checked by the caller; not ``O_PATH``: fanotify refuses those)
        belongs to. Marking the fd, not a path, leaves no window between the check and the mark."""
        _check(_libc.fanotify_mark(self.fd, FAN_MARK_ADD | FAN_MARK_MOUNT, FAN_OPEN | FAN_ONDIR, dirfd, None),
               "fanotify_mark")

    def read(self) -> list[tuple[int, int, int]]:
        """Up to 64 KiB of queued events (about 2,700), as (mask, fd, pid of the opener); the
        caller closes each fd (FAN_NOFD for an overflow). Empty when none are queued."""
        try:
            data = os.read(self.fd, READ_BYTES)
        except BlockingIOError:
            return []
        out = []
        off = 0
        while off + META.size <= len(data):
            event_len, _v, _r, _meta_len, mask, fd, pid = META.unpack_from(data, off)
            out.append((mask, fd, pid))
            off += event_len
        return out

    def queued(self) -> int:
        """Bytes of events still queued (``FIONREAD``). The kernel walks the whole queue for it,
        holding the lock every new event takes: for now and then, not for every read."""
        return struct.unpack("i", fcntl.ioctl(self.fd, termios.FIONREAD, b"\0" * 4))[0]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
