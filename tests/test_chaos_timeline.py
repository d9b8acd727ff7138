"""tests/chaos/timeline.py reads the nodes' logs as they are written and flags a
failover in which a surviving replica cut its tail (the new leader waits for it)."""

from __future__ import annotations

from pathlib import Path

from tests.chaos.timeline import read, report


def _line(at: str, node: str, term: int, source: str, text: str) -> str:
    return f"2026-12-03 04:10:{at} INFO [{node} shard=0 term={term}] sutra_cluster.{source}: {text}\n"


N0 = _line("50,000", "n0", 1, "failover.loop", "promoted self: leader key acquired at term 2")
N1 = "".join([
    _line("57,653", "n1", 2, "replication.follower", "stream from 127.0.0.11:1 ended: UNAVAILABLE: Stream removed"),
    _line("57,700", "n1", 2, "failover.loop", "leader n0 at 127.0.0.11:1 refuses connections: it is gone; revoking"),
    _line("57,750", "n1", 2, "failover.loop", "promoted self: leader key acquired at term 3"),
    _line("57,807", "n1", 3, "replication.leader", "follower n2 must cut its log after LSN 153: history diverged"),
    _line("58,366", "n1", 3, "failover.loop", "sync set at term 3 is now ['n2']"),
])


def test_a_survivor_cut_in_a_failover_is_flagged_with_its_offset(tmp_path: Path) -> None:
    (tmp_path / "n0.log").write_text(N0)
    (tmp_path / "n1.log").write_text(N1)
    out = report(read(tmp_path), {3})
    assert out[0] == "=== term 3: n1 won (n0 led term 2); offsets from " + out[0].rsplit(" ", 1)[1]
    assert "  survivor n2 cut at +0.154: the new leader waits for it" in out
    assert "   +0.713 n1 [term 3] loop: sync set at term 3 is now ['n2']" in out


def test_the_killed_leader_cutting_its_own_tail_on_rejoin_is_not_flagged(tmp_path: Path) -> None:
    (tmp_path / "n0.log").write_text(N0)
    (tmp_path / "n1.log").write_text(N1.replace("follower n2 must cut", "follower n0 must cut"))
    assert not any("survivor" in line for line in report(read(tmp_path), set()))
