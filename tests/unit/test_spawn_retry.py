"""The Retry-After range of starts refused for the spawn limit follows how many users wait."""

from __future__ import annotations

import random
from types import SimpleNamespace

from vre.spawn_retry import FLOOR, RATE, WINDOW, SpawnRetry


def refusal(user: str, status: int = 429, method: str = "POST", path: str = "/hub/api/users/u/servers/p"):
    return SimpleNamespace(get_status=lambda: status, request=SimpleNamespace(method=method, path=path),
                           _jupyterhub_user=SimpleNamespace(name=user))


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
    for other in (refusal("x", status=202), refusal("y", method="GET"), refusal("z", path="/hub/api/users/z/tokens")):
        retry.saw(other)
    assert retry.waiting() == 1000
    now[0] += WINDOW + 1
    retry.saw(refusal("late"))
    assert retry.waiting() == 1 and tuple(retry) == FLOOR and len(retry.refused) == 1
