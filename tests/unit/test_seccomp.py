"""The session containers' seccomp profile: the engine's default without user namespaces."""

import json

import pytest

from vre.backends import seccomp
from vre.settings import Settings


def test_clone_and_unshare_only_without_a_user_namespace():
    base = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read", "clone", "clone3", "unshare", "write"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}}]}
    profile = seccomp.session_profile(base)
    plain = [r for r in profile["syscalls"] if not r.get("args")]
    assert all(not set(seccomp.GUARDED) & set(r["names"]) for r in plain if r["action"] == "SCMP_ACT_ALLOW")
    guarded = next(r for r in profile["syscalls"] if r.get("args"))
    assert guarded["names"] == ["clone", "unshare"] and guarded["args"][0] == {
        "index": 0, "value": seccomp.CLONE_NEWUSER, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
    assert {"names": ["clone3"], "action": "SCMP_ACT_ERRNO"}.items() <= next(
        r for r in profile["syscalls"] if r["names"] == ["clone3"]).items()
    assert base["syscalls"][0]["names"] == ["read", "clone", "clone3", "unshare", "write"]  # not changed


def test_profile_file_from_the_hosts_default(tmp_path):
    if not any(p.is_file() for p in seccomp.BASE_PROFILES):
        pytest.skip("containers-common's seccomp.json is not installed")
    settings = Settings(state_dir=tmp_path)
    path = seccomp.ensure_profile(settings)
    assert json.loads(path.read_text())["defaultAction"] == "SCMP_ACT_ERRNO"
    assert path.stat().st_mode & 0o777 == 0o644
    assert seccomp.security_opt(settings, "podman") == f"seccomp={path}"
    assert seccomp.security_opt(settings, "docker").startswith("seccomp={")
