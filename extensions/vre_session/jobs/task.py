"""The Dask task that runs one batch job on a worker.

Each job runs as a subprocess (``python -m vre_session.jobs.runner``) in its own process group,
under this task: Dask cannot stop a running task, but the worker can kill a process group, so a
cancel (``kill``, called through ``Client.run``) or the run-time limit really ends the job and
everything it started. The task returns how the process ended and what it used.

Where the deployment runs each job as a Kubernetes Job of its own (``k8s_job_runner = "jobs"``),
there is no Dask: ``python -m vre_session.jobs.task SPEC_FILE`` runs the same task in the Job's
pod and leaves how the job ended as the container's termination message (``main``).

Where the job service cannot write the job's folder (Kubernetes with claims, see
``vre.jobs.inputs``), the spec says so with ``outdir_mode``: the task makes the folder and writes
the job's ``inputs`` (path in the folder -> base64) before the job runs.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import resource
import signal
import subprocess
import sys
import threading
import time

from . import leftovers

#: job id -> the job's process, on this worker
_running: dict[int, subprocess.Popen] = {}
_cancelled: set[int] = set()
_lock = threading.Lock()
KILL_GRACE = 5.0


def run_job(spec: dict) -> dict:
    """Run the job described by ``spec`` (written by the job service) and report how it ended."""
    job_id, outdir = spec["id"], spec["outdir"]
    make_outdir(spec)
    spec_file = os.path.join(outdir, ".job.json")
    with open(spec_file, "w") as f:
        json.dump({k: v for k, v in spec.items() if k != "inputs"}, f)   # the inputs are in the folder now
    started = time.time()
    leftovers.adopt_orphans()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    ooms_before = oom_kills()
    with open(os.path.join(outdir, "log.txt"), "ab", buffering=0) as log:
        log.write(f"[vre] job {job_id} started on {spec.get('worker', '?')} at "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}; limit {spec['max_runtime_s']} s\n".encode())
        proc = subprocess.Popen([sys.executable, "-m", "vre_session.jobs.runner", spec_file], cwd=outdir,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, **spec.get("env", {})})
        with _lock:
            _running[job_id] = proc
        timed_out = False
        try:
            proc.wait(timeout=spec["max_runtime_s"])
        except subprocess.TimeoutExpired:
            timed_out = True
            _note(log, f"[vre] run-time limit of {spec['max_runtime_s']} s reached: stopping the job")
            _kill_group(proc)
        finally:   # whatever happened above: nothing the job started outlives it here
            with _lock:
                _running.pop(job_id, None)
                cancelled = job_id in _cancelled
                _cancelled.discard(job_id)
                alone = not _running
            spent = _end_what_it_left(proc, alone, log)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        code = proc.returncode
        _note(log, f"[vre] job {job_id} ended with code {code}")
    ooms = oom_kills()
    return {
        "returncode": code, "timed_out": timed_out, "cancelled": cancelled,
        # processes it left that would not end: the engine stops this worker (they would read
        # under its next job's name)
        "spent": spent,
        # seen from inside (a pod's worker: nothing outside reads its cgroup); None: unknown
        "oom_kills": ooms - ooms_before if ooms is not None and ooms_before is not None else None,
        "usage": {"wall_s": round(time.time() - started, 3),
                  "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 3),
                  "max_rss_mb": round(after.ru_maxrss / 1024, 1)},
    }


class FolderInTheWay(Exception):
    """The job's folder cannot be made: the message says what is in its place."""


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def make_outdir(spec: dict) -> None:
    """The job's folder: made by the job service already, or (``outdir_mode``) here, with that
    mode, holding the job's inputs. At a job's first start whatever is in its place is renamed
    aside (``.stale-<id>-<random>``): an earlier job of the pool may have planted it (a module
    there would shadow an import of the runner, which starts in it). A later start of the same
    job (its first worker was lost: ``attempt`` > 1) goes on in its own folder and appends to its
    log, as on the host. Everything is done through descriptors opened without following links,
    so a link swapped in meanwhile is refused, not followed."""
    outdir, mode = spec["outdir"], spec.get("outdir_mode")
    if mode is None:
        os.makedirs(outdir, exist_ok=True)
        return
    parent, name = os.path.split(outdir)

    def in_the_way(why: str) -> FolderInTheWay:
        return FolderInTheWay(f"cannot make the job's folder {outdir}: {why}; rename what is in the way and "
                              "submit again")
    try:
        os.mkdir(parent, 0o2770)   # the workspace's (or held folder's) 'jobs'
    except FileExistsError:
        pass
    try:
        top = os.open(parent, _DIR)
    except OSError:
        raise in_the_way(f"{parent} must be a real folder, not a link or a file") from None
    try:
        if os.fstat(top).st_uid == os.getuid():
            os.fchmod(top, 0o2770)
        try:
            os.mkdir(name, mode, dir_fd=top)
        except FileExistsError:
            st = os.stat(name, dir_fd=top, follow_symlinks=False)
            ours = stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
            if not (ours and spec.get("attempt", 1) > 1):
                os.rename(name, f".stale-{name}-{os.urandom(4).hex()}", src_dir_fd=top, dst_dir_fd=top)
                os.mkdir(name, mode, dir_fd=top)
        except PermissionError:
            raise in_the_way(f"{parent} is not writable by the project's workers (make it the project's "
                             "group's, or remove it)") from None
        out = os.open(name, _DIR, dir_fd=top)
    except OSError as e:
        raise in_the_way(e.strerror or str(e)) from None
    finally:
        os.close(top)
    try:
        os.fchmod(out, mode)   # mkdir drops the setgid bit
        _write_inputs(out, spec.get("inputs") or {})
    finally:
        os.close(out)


def _write_inputs(out: int, inputs: dict) -> None:
    """The job's inputs (path in its folder -> base64) below the folder ``out``; those a first
    start wrote already are kept. A subfolder (a held job's ``input/``) is left read-only."""
    subfolders: dict[str, int] = {}
    try:
        for rel, data in sorted(inputs.items()):
            where, _, filename = rel.rpartition("/")
            if where and where not in subfolders:
                try:
                    os.mkdir(where, 0o700, dir_fd=out)
                except FileExistsError:
                    pass
                subfolders[where] = os.open(where, _DIR, dir_fd=out)
            folder = subfolders[where] if where else out
            try:
                fd = os.open(filename, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o400 if where else 0o640, dir_fd=folder)
            except FileExistsError:
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(base64.b64decode(data))
        for fd in subfolders.values():
            os.fchmod(fd, 0o500)   # a held job's copy of its code, as the job service makes it
    finally:
        for fd in subfolders.values():
            os.close(fd)


#: Where a container sees its own memory cgroup's OOM kills (cgroup v2, then v1).
OOM_FILES = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")


def oom_kills() -> int | None:
    """How many processes the kernel killed for this container's memory limit so far, or None
    where the cgroup is not the container's own (a sandbox sees the host's: the engine reads it)."""
    for path in OOM_FILES:
        try:
            with open(path) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the job's process group, then SIGKILL what is left after a grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            # the leader is gone; children that ignored SIGTERM still get SIGKILL
            if sig == signal.SIGTERM:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return
        except subprocess.TimeoutExpired:
            continue


def _end_what_it_left(proc: subprocess.Popen, alone: bool, log) -> bool:
    """Once the job's process ended: every process it started, a daemon in a session of its own
    included (``leftovers``), or, with another job running here (not ``alone``: the two jobs'
    orphans cannot be told apart), the rest of its process group. What was ended is in the job's
    log, and its usage in the job's. True when some would not end (the worker is spent)."""
    if not alone:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return False
    if proc.returncode is None:   # a limit's kill it outlived: it is ours to reap, not the sweep's
        proc.kill()
        try:
            proc.wait(timeout=leftovers.GRACE_S)
        except subprocess.TimeoutExpired:
            pass
    ended, stuck = leftovers.end_leftovers(unreaped=frozenset() if proc.returncode is not None else {proc.pid})
    proc.poll()   # the leader, if it died meanwhile
    if ended:
        shown = ", ".join(ended[:10]) + (f" and {len(ended) - 10} more" if len(ended) > 10 else "")
        _note(log, f"[vre] the job left {len(ended)} process(es) running, ended: {shown}")
    if stuck:
        _note(log, f"[vre] {len(stuck)} of them would not end ({', '.join(stuck[:10])}): this worker takes no other job")
    return bool(stuck)


def _note(log, line: str) -> None:
    """A line of the task's in the job's log, which the job can fill (its disk, its quota): a
    line lost must not keep the task from ending what the job left, or from reporting."""
    try:
        log.write(line.encode() + b"\n")
    except OSError:
        pass


def kill(job_id: int) -> bool:
    """Cancel a running job on this worker (called with ``Client.run``); True if it was here."""
    with _lock:
        proc = _running.get(job_id)
        if proc is None:
            return False
        _cancelled.add(job_id)
    threading.Thread(target=_kill_group, args=(proc,), daemon=True).start()
    return True


#: Where the kubelet reads a container's termination message (it keeps 4096 bytes of it).
TERMINATION_LOG = "/dev/termination-log"
ERROR_MAX = 1000
#: Bytes of the report at most (the kubelet keeps 4096 of a termination message).
REPORT_MAX = 4000


def main(argv: list[str] | None = None) -> int:
    """Run the job whose spec is in the file ``argv[0]`` (its Kubernetes Job's Secret) and write
    how it ended (``run_job``'s report, or ``{"error": ...}`` when the task itself failed) as the
    termination message, where the job engine reads it. A SIGTERM (the Job deleted: cancelled)
    stops the job's process group, and the report says it was cancelled."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m vre_session.jobs.task SPEC_FILE", file=sys.stderr)
        return 2

    def stop(*_):
        for job_id in list(_running):
            kill(job_id)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    try:
        with open(argv[0]) as f:
            result = run_job(json.load(f))
    except Exception as e:   # noqa: BLE001 - the report says why; the engine fails the job with it
        result, code = {"error": f"{type(e).__name__}: {e}"[:ERROR_MAX]}, 1
    report = json.dumps(result)
    while len(report.encode()) > REPORT_MAX and "error" in result:   # an escaped text may grow sixfold
        result = {"error": result["error"][:len(result["error"]) // 2] + " [cut]"}
        report = json.dumps(result)
    try:
        with open(TERMINATION_LOG, "w") as f:
            f.write(report)
    except OSError as e:
        print(f"[vre] could not write the termination message ({e}); the report was: {report}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
