"""The request path's memos (:mod:`broker.support.memo`): bounded, and expiring."""

from __future__ import annotations

from broker.support.memo import Bounded, Expiring


def test_a_full_memo_drops_its_oldest_entry() -> None:
    memo: Bounded[str, int] = Bounded(2)
    memo["a"], memo["b"] = 1, 2
    memo["a"] = 10  # a re-set key is no new entry: nothing dropped
    assert dict(memo) == {"a": 10, "b": 2}
    memo["c"] = 3
    assert dict(memo) == {"b": 2, "c": 3}


def test_entries_expire_and_none_is_a_value() -> None:
    now = [100.0]
    memo: Expiring[str, int | None] = Expiring(2, ttl=5, clock=lambda: now[0])
    memo["gone"] = None  # a cached "unknown" is an entry, not an absence
    assert "gone" in memo and memo.get("gone", -1) is None
    now[0] += 4
    memo["later"] = 1
    now[0] += 1.5
    assert "gone" not in memo and memo.get("gone", -1) == -1
    assert memo.get("later", -1) == 1
    memo["x"], memo["y"] = 2, 3
    assert len(memo) == 2 and memo.get("later", -1) == -1  # the oldest dropped
    memo.pop("x")
    memo.clear()
    assert len(memo) == 0
