"""The sandbox backend's translation of a SessionPlan into a command line (policy is tested on the plan)."""

from pathlib import Path

import pytest
from tornado import web

from vre.backends.plan_spawner import user_options_profile as _user_options_profile
from vre.backends.sandbox import SandboxSpawner
from vre.plan import Mount, SessionPlan, runtime_mounts
from vre.settings import Settings


def make_plan(**kw) -> SessionPlan:
    base = dict(user="ann", project="lung", profile="small", role="session", session_id="ann-lung",
                uid=200001, gid=300001, cpu=1.5, mem_mb=2048, gpus=0, network="vre-lung",
                datasets=("ct",),
                mounts=(Mount(Path("/srv/ct"), "/data/ct", True), Mount(Path("/st/home"), "/home/jovyan", False, "home"),
                        Mount(Path("/st/ws"), "/home/jovyan/project", False, "workspace"),
                        *runtime_mounts("session", Path("/run/vre-t/sessions/ann-lung"), Path("/run/vre-t/hub"))),
                env={"OMP_NUM_THREADS": "2"})
    base.update(kw)
    return SessionPlan(**base)


@pytest.fixture
def spawner(tmp_path):
    sp = SandboxSpawner(settings=Settings(state_dir=tmp_path, run_dir=Path("/run/vre-t")))
    sp.session_id = "ann-lung"
    return sp


def pairs(argv, flag):
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == flag]


def test_command_renders_plan(spawner):
    argv = spawner._command(make_plan())
    assert argv[:4] == ["ip", "netns", "exec", "vre-lung"]
    assert "--reuid=200001" in argv and "--regid=300001" in argv and "--no-new-privs" in argv
    assert ("/srv/ct", "/data/ct") in pairs(argv, "--ro-bind")
    assert ("/st/home", "/home/jovyan") in pairs(argv, "--bind")
    assert ("/st/ws", "/home/jovyan/project") in pairs(argv, "--bind")
    assert ("/run/vre-t/hub", "/run/vre/hub") in pairs(argv, "--ro-bind")
    for flag in ("--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--new-session"):
        assert flag in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert "--unshare-net" not in argv  # the island (ip netns exec) is the network namespace
    assert "--share-net" not in argv
    # nothing of the host's root but /usr and named /etc files
    ro = [src for src, _ in pairs(argv, "--ro-bind")]
    assert "/" not in ro and "/etc" not in ro and "/root" not in ro and "/home" not in ro
    assert argv.index("--remount-ro") < argv.index("--sock=/run/vre/session/jupyter.sock")


def test_writable_binds_are_exactly_the_plan_and_the_socket_dir(spawner):
    argv = spawner._command(make_plan())
    assert sorted(t for _, t in pairs(argv, "--bind")) == ["/home/jovyan", "/home/jovyan/project", "/run/vre/session",
                                                        "/run/vre/spool"]


def test_profile_option_parsing():
    assert _user_options_profile({"profile": ["large"]}) == "large"
    assert _user_options_profile({}) is None and _user_options_profile(None) is None
    with pytest.raises(web.HTTPError):
        _user_options_profile({"profile": {"cpu": 64}})


def test_every_bind_is_a_plan_mount(spawner):
    """The backend only translates: besides the shared software (/usr, the environment, named /etc
    files) every bind comes from the plan."""
    plan = make_plan()
    argv = spawner._command(plan)
    expected = {(str(m.source), m.target) for m in plan.mounts}
    shared = {(src, dst) for src, dst in pairs(argv, "--ro-bind") if src == dst or dst == "/usr/bin/node"}
    assert all(dst.startswith(("/usr", "/etc/", str(spawner.settings.session_env))) for _, dst in shared)
    binds = set(pairs(argv, "--bind")) | (set(pairs(argv, "--ro-bind")) - shared)
    assert binds == expected


def test_the_launch_gate_fds_reach_bwrap_before_the_command():
    from vre.backends.bwrap import sandbox_argv

    argv = sandbox_argv(Settings(state_dir=Path("/st"), run_dir=Path("/run/vre-t")), make_plan(), gate_fds=(7, 9))
    assert argv[argv.index("--info-fd") + 1] == "7" and argv[argv.index("--block-fd") + 1] == "9"
    assert argv[-1] == "--"  # bwrap's own options, before the program


def test_a_server_socket_counts_as_up_only_once_it_listens(tmp_path):
    """The hub takes the socket over when it is up; taking it between the server's bind and its
    chmod made the server fail to listen (a session that 'never showed up')."""
    import socket

    from vre.backends.plan_spawner import socket_listens

    path = tmp_path / "jupyter.sock"
    assert not socket_listens(path)                  # not there yet
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        assert not socket_listens(path)              # bound, not yet set up and listening
        s.listen(1)
        assert socket_listens(path)


async def test_a_start_that_never_listens_fails_with_a_reason_before_jupyterhub_gives_up(spawner, monkeypatch):
    """JupyterHub's own start_timeout ends a start with a bare TimeoutError ("Spawn failed: " and
    nothing after it); the spawner's deadline comes first and says what did not happen."""
    import asyncio

    from vre.backends import plan_spawner

    async def nothing(*_a, **_k):
        return None

    async def running():
        return True

    monkeypatch.setattr(plan_spawner, "aemit", nothing)
    for name in ("_launch", "_teardown"):
        monkeypatch.setattr(spawner, name, nothing)
    for name in ("_prepare_host", "_write_access"):
        monkeypatch.setattr(spawner, name, lambda *_a: None)
    monkeypatch.setattr(spawner, "_is_running", running)
    monkeypatch.setattr(spawner, "_log_tail", lambda *_a: nothing())
    spawner.plan = make_plan()
    spawner.start_timeout = 3
    with pytest.raises(TimeoutError) as raised:
        await asyncio.wait_for(spawner.start(), timeout=spawner.start_timeout)  # as JupyterHub does
    assert "did not listen within 3 s" in str(raised.value)
