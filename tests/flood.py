"""A researcher's kernel opening dataset files faster than an observer records them, and the
observer held up meanwhile (a loaded machine), for the hostview and the node observer tests."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

# A child per round opens every file once: the kernel merges a process' repeated opens of a file
# whose event is still queued, never another process'. Prints the opens and the longest stall.
FLOOD = """
import json, os, time
root = "/data/%(dataset)s"
files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
print("@@going", flush=True)
opens, stall, last = 0, 0.0, time.monotonic()
end = last + %(seconds)f
while time.monotonic() < end and opens < %(most)d:
    pid = os.fork()
    if pid == 0:
        for path in files:
            os.close(os.open(path, os.O_RDONLY))
        os._exit(0)
    os.waitpid(pid, 0)
    now = time.monotonic()
    stall, last, opens = max(stall, now - last), now, opens + len(files)
print("@@" + json.dumps({"opens": opens, "stall": stall}))
"""


def flood_while_held(kernel, dataset: str, observer_pid: int, *, seconds: float = 10, most: int = 1 << 40,
                     hold: tuple[float, float | None] = (1.5, 4.5)) -> dict:
    """The kernel floods ``dataset`` for ``seconds`` (or until ``most`` opens) while the observer
    is stopped from ``hold[0]`` to ``hold[1]`` seconds into it (``None``: still stopped on return,
    the caller lets it go); returns {opens, stall}. The hold is timed from the flood's own word
    that it began: a kernel slow to start on a loaded machine must not flood only after the
    observer is let go (then nothing is behind, and nothing is frozen)."""
    msg_id = kernel.execute(FLOOD % {"dataset": dataset, "seconds": seconds, "most": most})
    out, timers, deadline = "", [], time.monotonic() + 180
    try:
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"the flood did not end in 180 s: {out[-300:]!r}")
            msg = kernel.recv(timeout=max(0.1, deadline - time.monotonic()))
            kind = msg["header"]["msg_type"]
            if kind == "status" and msg["content"]["execution_state"] in ("restarting", "dead"):   # the server's
                raise AssertionError(f"the kernel died during the flood: {out[-300:]!r}")
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if kind == "error":
                raise AssertionError(f"the flood failed: {msg['content']['ename']}: {msg['content']['evalue']}")
            if kind == "stream":
                out += msg["content"]["text"]
                if not timers and "@@going" in out:
                    timers = [threading.Timer(hold[0], os.kill, (observer_pid, signal.SIGSTOP))]
                    if hold[1] is not None:
                        timers.append(threading.Timer(hold[1], os.kill, (observer_pid, signal.SIGCONT)))
                    for t in timers:
                        t.start()
            if kind == "status" and msg["content"]["execution_state"] == "idle":
                break
        assert timers, f"the flood never said it began: {out[-300:]!r}"
        result = json.loads(out.rsplit("@@", 1)[1])
    except BaseException:
        for t in timers:   # a stop not sent yet never will be; one under way ends before the SIGCONT
            t.cancel()
            t.join()
        os.kill(observer_pid, signal.SIGCONT)
        raise
    for t in timers:
        t.join()
    if hold[1] is not None:
        os.kill(observer_pid, signal.SIGCONT)
    return result


def check_pauses(pauses: list[dict], flood: dict, user: str, via: str) -> None:
    """At least one pause (the observer may fall behind her again once she is thawed), each the
    host's record of her, and one she felt."""
    assert pauses, "no dataset.read_pause"
    for pause in pauses:
        assert (pause["actor"], pause["source"], pause["details"]["via"]) == (user, "host", via), pause
        assert pause["details"]["opens_while_behind"] > 0 and pause["details"]["seconds"] > 0
    longest = max(p["details"]["seconds"] for p in pauses)
    assert flood["stall"] >= longest / 2, (flood, longest)
