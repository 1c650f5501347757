"""The egress meter's limits: the cap withholds large answers, the ceiling over it stops all."""

from vre.access import meter
from vre.access.meter import GRACE_MIN, LARGE, Meter, ceiling


async def _nowhere(rows):
    pass


def test_the_ceiling_is_the_cap_and_an_allowance():
    assert ceiling(0) == 0                                  # no cap: no ceiling either
    assert ceiling(1 << 20) == (1 << 20) + GRACE_MIN        # small caps: at least GRACE_MIN more
    assert ceiling(100 << 20) == (100 << 20) + (25 << 20)   # large caps: a quarter more
    assert GRACE_MIN > LARGE


def test_over_the_cap_small_answers_pass_until_the_ceiling():
    m, cap = Meter(_nowhere), 1 << 20
    m.add("s1", "bob", "p", "kernel", cap - 10)
    assert not m.over("bob", "p", cap) and m.over("bob", "p", cap, adding=10)
    m.add("s1", "bob", "p", "kernel", 10)
    assert m.over("bob", "p", cap) and not m.past_ceiling("bob", "p", cap)
    m.add("s2", "bob", "p", "other", GRACE_MIN)   # another session of the same member counts too
    assert m.past_ceiling("bob", "p", cap)
    assert not m.past_ceiling("bob", "other-project", cap) and not m.past_ceiling("alice", "p", cap)
    assert not m.past_ceiling("bob", "p", 0)


def test_each_limit_is_recorded_once_per_session_and_day(monkeypatch):
    m = Meter(_nowhere)
    assert m.first_refusal("s1") and not m.first_refusal("s1")
    assert m.first_refusal("s1", "ceiling") and not m.first_refusal("s1", "ceiling")
    assert m.first_refusal("s2")
    m.add("s1", "bob", "p", "kernel", 5)
    monkeypatch.setattr(meter, "today", lambda: "2999-01-01")   # the next UTC day starts afresh
    assert m.first_refusal("s1") and m.used("bob", "p") == 0
