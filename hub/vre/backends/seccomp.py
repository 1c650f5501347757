"""The seccomp profile of session containers: the engine's default, without user namespaces.

Podman's and Docker's default profiles let an unprivileged process create a user namespace
(``unshare -U``) and, as its root, new mounts: an over-mount of the server's socket directory
visible only inside, or a bind mount of a dataset that per-mount observers on the host do not
see. Sandboxes refuse user namespaces with bubblewrap's ``--disable-userns``; containers get this
profile: the default (containers-common's ``seccomp.json``) where ``clone`` and ``unshare`` are
allowed only without ``CLONE_NEWUSER`` and ``clone3`` (whose flags seccomp cannot read) answers
ENOSYS, so the C library falls back to ``clone``. Threads, ``fork`` and ``exec`` are unaffected.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..settings import Settings

BASE_PROFILES = (Path("/usr/share/containers/seccomp.json"), Path("/etc/containers/seccomp.json"))
CLONE_NEWUSER = 0x10000000
ENOSYS = 38
GUARDED = ("clone", "clone3", "unshare")


class SeccompError(RuntimeError):
    pass


def session_profile(base: dict) -> dict:
    """``base`` with clone/unshare allowed only without CLONE_NEWUSER and clone3 refused."""
    profile = json.loads(json.dumps(base))
    for rule in profile.get("syscalls", []):
        if rule.get("action") == "SCMP_ACT_ALLOW":
            rule["names"] = [n for n in rule["names"] if n not in GUARDED]
    profile["syscalls"] = [r for r in profile["syscalls"] if r.get("names")] + [
        {"names": ["clone", "unshare"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": CLONE_NEWUSER, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
         "comment": "vre: no user namespaces in sessions"},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS,
         "comment": "vre: clone3's flags are out of seccomp's reach; the C library falls back to clone"},
    ]
    return profile


def profile_path(settings: Settings) -> Path:
    return settings.state_dir / "seccomp" / "session.json"


def ensure_profile(settings: Settings) -> Path:
    """Write the profile (from the host's containers-common default) if it changed; its path."""
    base = next((p for p in BASE_PROFILES if p.is_file()), None)
    if base is None:
        raise SeccompError("no default seccomp profile on this host (" + ", ".join(map(str, BASE_PROFILES))
                           + "); install the Debian package containers-common")
    text = json.dumps(session_profile(json.loads(base.read_text())), indent=1, sort_keys=True)
    path = profile_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        tmp.replace(path)
    return path


def security_opt(settings: Settings, engine: str) -> str:
    """The ``seccomp=`` option: Podman's compatible API takes a file on the engine's host, Docker's
    the profile itself."""
    path = ensure_profile(settings)
    return f"seccomp={path}" if engine == "podman" else "seccomp=" + path.read_text()
