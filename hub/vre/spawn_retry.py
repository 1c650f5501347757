"""How long a start refused for the spawn limit is told to wait: its 429's Retry-After.

JupyterHub answers a start beyond ``concurrent_spawn_limit`` with 429 and a Retry-After drawn from
``spawn_throttle_retry_range``, and each retry costs the hub a count over every user's servers
(``UserDict.count_active_users``, about 15 ms at 1,000 users) besides its authentication. A fixed
range makes the retries' rate grow with the crowd: in the scale test (``bench/k8s_scale.py``),
1,000 users told 3-10 s were refused 39,153 times in 15 minutes, the hub's loop did little else,
and 8 sessions started. So the range follows how many users
were turned away lately: a few wait 3-10 s (a queue that moves), a crowd spreads its retries so
that all of them together come back about ``RATE`` times a second. The starts go through no
slower: a slot that frees is taken by the next retry within a fraction of a second.
"""

from __future__ import annotations

import re
import time
from urllib.parse import unquote

#: Retry-After range (seconds) while few starts wait: the least a refused start is told.
FLOOR = (3, 10)
#: Retries per second that all waiting users together should make, about.
RATE = 10.0
#: A server start through the REST API (the default server or a named one), below any base URL.
START = re.compile(r"/hub/api/users/([^/]+)/servers?(?:/[^/]+)?$")
#: Seconds a refused user counts as waiting (longer than the longest Retry-After it may get).
WINDOW = 300.0


class SpawnRetry:
    """The users refused lately, and the Retry-After range that follows from them. JupyterHub reads
    the range as ``random.uniform(*range)`` at each refusal (``tornado_settings``), so iterating
    gives the current (low, high)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.refused: dict[str, float] = {}   # user -> when last refused

    def saw(self, handler) -> None:
        """The hub's request log calls this for every request: count the 429s of server starts,
        and no longer count a user whose start then went through (its 201 or 202): else the range
        stays as long as the crowd's was while the last few wait, and free slots stay free."""
        start = START.search(handler.request.path) if handler.request.method == "POST" else None
        if start is None:
            return
        user, status = unquote(start.group(1)), handler.get_status()   # whose server, not who asked
        if status == 429:
            self.refused[user] = self.clock()
        elif status < 400:
            self.refused.pop(user, None)

    def waiting(self) -> int:
        cutoff = self.clock() - WINDOW
        if len(self.refused) > 64:   # forget the old ones now and then, not at every look
            self.refused = {u: t for u, t in self.refused.items() if t >= cutoff}
        return sum(1 for t in self.refused.values() if t >= cutoff)

    def range(self) -> tuple[float, float]:
        mean = self.waiting() / RATE
        return max(FLOOR[0], 0.5 * mean), max(FLOOR[1], 1.5 * mean)

    def __iter__(self):
        return iter(self.range())

    def __deepcopy__(self, memo):
        """traitlets deep-copies config values; the log function's instance and JupyterHub's
        setting must stay one (a copy would count refusals that no Retry-After ever sees)."""
        return self
