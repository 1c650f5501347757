"""The session's server process: JupyterHub's single-user server, made non-dumpable first.

A researcher's kernels and terminals run under the same uid as this server. Without more, any of
them could ptrace it, read its memory (``/proc/<pid>/mem``) and environment (its credentials), or
inject code into it. ``PR_SET_DUMPABLE = 0`` makes the kernel refuse all of that to every process
without CAP_SYS_PTRACE in the server's user namespace, which no session process has. The flag is
reset by ``execve``, so it is set here, in the process that then runs the server (kernels, which
the server execs, stay dumpable: researchers keep their debuggers for their own code).

The hub starts sessions as ``python -m vre_session.serve <server arguments>``.
"""

from __future__ import annotations

import ctypes
import os
import sys

PR_SET_DUMPABLE, PR_GET_DUMPABLE = 4, 3


def make_undumpable() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 or libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise SystemExit(f"vre_session.serve: cannot make the server non-dumpable ({os.strerror(err)}); "
                         "refusing to start a session whose server its kernels could trace")


def main() -> None:
    make_undumpable()
    from jupyterhub.singleuser import main as singleuser_main

    sys.argv[0] = "jupyterhub-singleuser"
    sys.exit(singleuser_main())


if __name__ == "__main__":
    main()
