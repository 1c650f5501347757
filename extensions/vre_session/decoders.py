"""Decoder processes: untrusted DICOM files are parsed and decoded outside the server, under a time limit.

A DICOM file can be malformed in ways that make a parser or a C decoder spin, allocate without
bound, or crash. None of that may reach the Jupyter server, so every call that reads a file runs
in one of a few long-lived worker processes and must answer within ``timeout`` seconds (5 by
default, counted from when a ready worker receives the call). A worker that runs over is killed
and replaced; one that dies (segfault, out of memory) is replaced; either way the call raises
:class:`~vre_session.dicom.DicomError` with a 4xx status, so the API answers a clear error
instead of a 500 or a hang.

The decoders (``DecoderPool``; nothing to do with the batch queue's Dask workers) are plain
``python -c`` subprocesses talking over a socketpair (pickled messages via
``multiprocessing.connection.Connection``), not ``multiprocessing.Process``: that would re-run the
server's ``__main__`` (the Jupyter server script) in every child. They import numpy, pydicom and
its decoder plugins before announcing that they are ready; one is started in the background when
the extension loads, so the first image does not wait, the others on demand.

Handlers ``await pool.run(name, *args)``: the blocking pipe exchange runs in a small thread pool,
so the event loop never waits on a decoder.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection

from .dicom import DicomError

log = logging.getLogger("vre_session")

TIMEOUT_S = 5.0
STARTUP_TIMEOUT_S = 60.0  # a worker's start (imports) is not a file's fault: generous, separate limit
#: Functions a worker may run (module attribute names); anything else is refused.
ALLOWED = frozenset({"read_instance", "decode_frames", "instance_tags", "render_thumbnail"})


def _child(fd: int, module: str, allowed: list[str], mem_limit: int) -> None:
    """Worker process entry point: announce readiness, then answer calls until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if mem_limit > 0:
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))
        except (ImportError, ValueError, OSError):
            pass
    conn = Connection(fd)
    mod = importlib.import_module(module)
    try:  # pay pydicom's pixel-handling import cost before the first (timed) call
        importlib.import_module("pydicom.pixels")
    except Exception:
        pass
    conn.send(("ready", os.getpid()))
    allowed_set = frozenset(allowed)
    while True:
        try:
            name, args = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        try:
            if name not in allowed_set:
                raise DicomError(400, f"unknown operation {name!r}")
            reply = (True, getattr(mod, name)(*args))
        except DicomError as e:
            reply = (False, (e.status, e.message))
        except MemoryError:
            reply = (False, (413, "the file needs more memory to decode than this session allows"))
        except RecursionError:
            reply = (False, (422, "the file is nested too deeply to read (damaged?)"))
        except Exception as e:  # the last line of defence: a clear 422, never a 500
            reply = (False, (422, f"cannot read the file: {type(e).__name__}: {' '.join(str(e).split())[:300]}"))
        try:
            _send(conn, reply)
        except (EOFError, OSError):
            return
        except Exception as e:  # e.g. an unpicklable result
            _send(conn, (False, (422, f"cannot transfer the result: {type(e).__name__}")))


def _send(conn, obj) -> None:
    """Pickle ``obj`` with its large buffers (decoded pixels) out of band: they are written to the
    pipe as they are, not copied into the pickle first. Message: ``<u32 buffer count><pickle>``,
    then one message per buffer."""
    buffers: list = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    conn.send_bytes(len(buffers).to_bytes(4, "little") + data)
    for buffer in buffers:
        conn.send_bytes(buffer.raw())


def _recv(conn):
    """What ``_send`` sent; arrays are built on the received bytes (read-only), not copied."""
    message = conn.recv_bytes()
    count = int.from_bytes(message[:4], "little")
    if count > 4096:
        raise OSError("malformed reply from a decoder")
    buffers = [conn.recv_bytes() for _ in range(count)]
    return pickle.loads(memoryview(message)[4:], buffers=buffers)


class _Decoder:
    def __init__(self, process: subprocess.Popen, conn):
        self.process, self.conn = process, conn

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        try:
            self.conn.close()
        except OSError:
            pass
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not wait
            pass


class DecoderPool:
    """At most ``size`` concurrent calls, each in its own worker process, each within ``timeout``."""

    def __init__(self, size: int | None = None, timeout: float = TIMEOUT_S, *, module: str = "vre_session.dicom",
                 allowed: frozenset = ALLOWED, mem_limit_mb: int | None = None):
        if size is None:
            threads = os.environ.get("OMP_NUM_THREADS") or str(os.cpu_count() or 2)
            size = max(2, min(4, int(threads) if threads.isdigit() else 2))
        self.size, self.timeout, self.module, self.allowed = size, timeout, module, allowed
        mem = mem_limit_mb if mem_limit_mb is not None else int(os.environ.get("VRE_DECODER_MEMORY_MB", "3072"))
        self.mem_limit = mem * 1024 * 1024 if mem > 0 else 0
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[_Decoder] = []
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=size * 4, thread_name_prefix="vre-decode")
        self._closed = False
        self.killed = 0  # workers killed for running over or crashing (for tests and logs)

    def _spawn(self) -> _Decoder:
        parent_sock, child_sock = socket.socketpair()
        for sock, option in ((child_sock, socket.SO_SNDBUF), (parent_sock, socket.SO_RCVBUF)):
            try:  # a decoded slice in few writes (capped by the kernel's limits for non-root)
                sock.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
            except OSError:
                pass
        fd = child_sock.fileno()
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = (f"import sys; sys.path.insert(0, {package_parent!r}); "
                f"from vre_session.decoders import _child; "
                f"_child({fd}, {self.module!r}, {sorted(self.allowed)!r}, {self.mem_limit})")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        try:
            process = subprocess.Popen([sys.executable, "-c", code], pass_fds=(fd,), stdin=subprocess.DEVNULL,
                                       env=env, cwd="/", close_fds=True)
        finally:
            child_sock.close()
        conn = Connection(os.dup(parent_sock.fileno()))
        parent_sock.close()
        worker = _Decoder(process, conn)
        try:
            ready = conn.poll(STARTUP_TIMEOUT_S) and conn.recv()
        except (EOFError, OSError):
            ready = None
        if not ready or ready[0] != "ready":
            worker.kill()
            raise DicomError(503, "the image decoder could not start in this session; try again, "
                                  "or ask an admin to check the server log")
        return worker

    def prestart(self, count: int = 1) -> None:
        """Start ``count`` workers now (in a background thread), so the first image does not wait;
        the others start on demand (each holds ~55 MB)."""
        def run():
            started = []
            try:
                for _ in range(min(count, self.size)):
                    started.append(self._spawn())
            except DicomError as e:
                log.warning("VRE viewer: %s", e.message)
            for worker in started:
                self._give_back(worker)
        threading.Thread(target=run, name="vre-decoder-start", daemon=True).start()

    def _take(self) -> _Decoder:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.alive():
                    return worker
                worker.kill()
        return self._spawn()

    def _give_back(self, worker: _Decoder) -> None:
        with self._lock:
            if self._closed or len(self._idle) >= self.size:
                worker.kill()
            else:
                self._idle.append(worker)

    def call(self, name: str, *args, timeout: float | None = None):
        """Run ``name(*args)`` in a worker; blocking. Raises DicomError for every failure."""
        limit = self.timeout if timeout is None else timeout
        with self._slots:
            if self._closed:
                raise DicomError(503, "the viewer is shutting down")
            worker = self._take()
            healthy = False
            try:
                started = time.monotonic()
                worker.conn.send((name, args))
                if not worker.conn.poll(limit):
                    self.killed += 1
                    log.warning("VRE viewer: %s%r ran over %.1f s; decoder worker killed", name, args[:1], limit)
                    raise DicomError(422, f"reading the file took longer than {limit:g} s, so it was stopped; "
                                          "the file may be damaged or unusually large")
                try:
                    ok, value = _recv(worker.conn)
                except (EOFError, OSError, pickle.UnpicklingError):
                    self.killed += 1
                    code = worker.process.poll()
                    log.warning("VRE viewer: decoder worker died (exit %s) on %s%r", code, name, args[:1])
                    raise DicomError(422, "the decoder crashed on this file (damaged data, or more memory "
                                          "needed than this session has)") from None
                healthy = True
                log.debug("VRE viewer: %s took %.3f s", name, time.monotonic() - started)
            finally:
                if healthy:
                    self._give_back(worker)
                else:
                    worker.kill()
        if ok:
            return value
        raise DicomError(*value)

    async def run(self, name: str, *args, timeout: float | None = None):
        """``call`` without blocking the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(self.call, name, *args, timeout=timeout))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()
        self._executor.shutdown(wait=False, cancel_futures=True)
