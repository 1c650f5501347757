"""The Retry-After range of starts refused for the spawn limit follows how many users wait."""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
from types import SimpleNamespace

from vre.spawn_retry import FLOOR, RATE, WINDOW, SpawnRetry


def refusal(user: str, status: int = 429, method: str = "POST", path: str = ""):
    """What the hub's request log gets of a request (as much as JupyterHub's logger reads); by
    default ``user`` starting its server ``p``."""
    path = path or f"/hub/api/users/{user}/servers/p"
    who = SimpleNamespace(name=user, kind="user")
    request = SimpleNamespace(method=method, path=path, uri=path, headers={}, remote_ip="127.0.0.1",
                              request_time=lambda: 0.01)
    return SimpleNamespace(get_status=lambda: status, request=request, _jupyterhub_user=who, current_user=who,
                           _headers={}, log=logging.getLogger("test"))


def test_few_waiting_are_told_3_to_10_s_a_crowd_spreads_its_retries():
    now = [1000.0]
    retry = SpawnRetry(clock=lambda: now[0])
    assert tuple(retry) == FLOOR
    for i in range(30):
        retry.saw(refusal(f"u{i}"))
    assert tuple(retry) == FLOOR   # 30 users at 3-10 s retry about 4.6 times a second: fine
    for i in range(1000):
        retry.saw(refusal(f"u{i}"))
        retry.saw(refusal(f"u{i}"))   # a user refused twice waits once
    low, high = retry.range()
    assert (low, high) == (0.5 * 1000 / RATE, 1.5 * 1000 / RATE)
    # JupyterHub draws from it as random.uniform(*range): the crowd's retries come ~RATE a second
    draws = [random.uniform(*retry) for _ in range(2000)]
    assert low <= min(draws) and max(draws) <= high
    assert abs(1000 / (sum(draws) / len(draws)) - RATE) < 2
    # only refused server starts count, and a refusal is forgotten after the window
    for other in (refusal("x", status=500), refusal("y", method="GET"), refusal("z", path="/hub/api/users/z/tokens"),
                  refusal("z", path="/hub/api/users/servers-z/tokens")):
        retry.saw(other)
    assert retry.waiting() == 1000
    # a user whose start went through waits no more: the last ones of a crowd are told less
    for i in range(990):
        retry.saw(refusal(f"u{i}", status=201 if i % 2 else 202))
    assert retry.waiting() == 10 and tuple(retry) == FLOOR
    retry.saw(refusal("u0"))   # refused again (another server, or after a stop): waits again
    assert retry.waiting() == 11
    # the server's owner counts, not who asked (an admin starting members' servers), below any base URL
    retry.saw(refusal("admin", path="/vre/hub/api/users/ann%40lab/servers/p"))
    assert "ann@lab" in retry.refused and "admin" not in retry.refused
    retry.saw(refusal("admin", status=202, path="/vre/hub/api/users/ann%40lab/server"))
    assert "ann@lab" not in retry.refused
    now[0] += WINDOW + 1
    retry.saw(refusal("late", path="/hub/api/users/late/server"))
    assert retry.waiting() == 1 and tuple(retry) == FLOOR


def test_refusals_older_than_the_window_are_dropped_once_there_are_many():
    now = [0.0]
    retry = SpawnRetry(clock=lambda: now[0])
    for i in range(100):
        retry.saw(refusal(f"u{i}"))
    now[0] += WINDOW + 1
    retry.saw(refusal("late"))
    assert retry.waiting() == 1 and list(retry.refused) == ["late"]


def test_the_hubs_log_function_counts_into_the_range_jupyterhub_reads(tmp_path):
    """Through JupyterHub's own loading of the hub's config (traitlets deep-copies config values):
    refusals the request log sees lengthen the Retry-After the throttle draws."""
    from jupyterhub.app import JupyterHub
    from traitlets.config import Config

    from vre.hubconfig import configure
    from vre.settings import load

    run = tempfile.mkdtemp(prefix="vre-retry-")
    (tmp_path / "vre.toml").write_text(f'state_dir = "{tmp_path}/state"\nrun_dir = "{run}/run"\n')
    (tmp_path / "state").mkdir()
    try:
        c = Config()
        configure(c, load(tmp_path / "vre.toml", environ={}))
        settings = JupyterHub(config=c).tornado_settings
        for i in range(400):
            settings["log_function"](refusal(f"u{i}"))
        assert tuple(settings["spawn_throttle_retry_range"]) == (0.5 * 400 / RATE, 1.5 * 400 / RATE)
    finally:
        shutil.rmtree(run)
