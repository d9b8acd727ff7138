"""The term history (terms.json) and the leader's divergence check, as pure
pieces: which LSNs each term wrote, where a follower's log leaves the leader's,
and what the follower must cut. Before, these were tested only through processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from sutra_cluster.replication.leader import divergence
from sutra_cluster.roles import MAX_TERM
from sutra_cluster.storage.terms import TermHistory


def history(tmp_path: Path, *terms: tuple[int, int]) -> TermHistory:
    """A history whose term t starts at LSN first, for each (t, first)."""
    h = TermHistory(tmp_path)
    for term, first in terms:
        h.begin(term, first)
    return h


def test_term_at_and_last_term(tmp_path: Path) -> None:
    h = history(tmp_path, (2, 11), (5, 21))
    assert [h.term_at(lsn) for lsn in (1, 10, 11, 20, 21, 99)] == [1, 1, 2, 2, 5, 5]
    assert h.last_term == 5 and h.highest == 5


def test_history_survives_a_restart(tmp_path: Path) -> None:
    history(tmp_path, (2, 11), (5, 21)).observe(7)
    again = TermHistory(tmp_path)
    assert again.history == [(1, 1), (2, 11), (5, 21)] and again.highest == 7


def test_branch_point_is_the_end_of_the_shared_term(tmp_path: Path) -> None:
    h = history(tmp_path, (2, 11), (5, 21))
    # A follower that wrote term 2 up to LSN 30 (a former leader of term 2):
    # term 2 ended at LSN 20 in this history, so it keeps up to 20.
    assert h.branch_point(30, 2) == 20
    assert h.branch_point(15, 2) == 15  # still inside term 2 here: nothing to cut
    assert h.branch_point(40, 5) == 40  # the current term: the leader decides by its own end
    assert h.branch_point(15, 3) is None  # a term this history never had


def test_truncate_forgets_terms_after_the_cut(tmp_path: Path) -> None:
    h = history(tmp_path, (2, 11), (5, 21))
    h.truncate(15)
    assert h.history == [(1, 1), (2, 11)] and h.last_term == 2
    assert TermHistory(tmp_path).history == [(1, 1), (2, 11)]


def test_terms_above_the_bound_are_refused_and_not_saved(tmp_path: Path) -> None:
    h = history(tmp_path, (2, 11))
    before = (tmp_path / "terms.json").read_bytes()
    with pytest.raises(ValueError, match="above the largest allowed term"):
        h.observe(MAX_TERM + 1)
    with pytest.raises(ValueError, match="above the largest allowed term"):
        h.begin(MAX_TERM + 1, 12)
    assert (tmp_path / "terms.json").read_bytes() == before and h.highest == 2


def test_a_corrupt_terms_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "terms.json").write_text("{not json")
    with pytest.raises(ValueError, match="terms.json: not a valid term history"):
        TermHistory(tmp_path)


# --------------------------------------------------------------------------- divergence


def test_a_prefix_of_the_leaders_log_is_not_divergent(tmp_path: Path) -> None:
    h = history(tmp_path, (2, 11), (5, 21))
    assert divergence(h, 30, "r", 0, 0) is None  # empty follower
    assert divergence(h, 30, "r", 15, 2) is None
    assert divergence(h, 30, "r", 30, 5) is None


def test_a_former_leaders_tail_is_cut_at_the_end_of_its_term(tmp_path: Path) -> None:
    # The follower led term 2 and wrote LSN 21..25 that this leader replaced with term 5.
    h = history(tmp_path, (2, 11), (5, 21))
    assert divergence(h, 30, "old", 25, 2) == (
        "history diverged: follower old ends at LSN 25 of term 2; this leader has term 5 there", 20)


def test_a_follower_ahead_in_an_older_term_keeps_what_the_leader_has(tmp_path: Path) -> None:
    # This leader's log ends at LSN 18, in term 2; the follower has term 2 up to 25.
    h = history(tmp_path, (2, 11))
    assert divergence(h, 18, "r", 25, 2) == (
        "history diverged: follower r ends at LSN 25 of term 2; this leader has no such LSN", 18)


def test_a_follower_ahead_in_a_term_the_leader_left_must_cut_back(tmp_path: Path) -> None:
    # Leader: term 2 from 11, term 5 from 21, log ends at 22. Follower: term 2 up to 30.
    h = history(tmp_path, (2, 11), (5, 21))
    assert divergence(h, 22, "r", 30, 2) == (
        "history diverged: follower r ends at LSN 30 of term 2; this leader has no such LSN", 20)


def test_a_term_the_leader_never_had_needs_a_snapshot(tmp_path: Path) -> None:
    h = history(tmp_path, (2, 11), (5, 21))
    assert divergence(h, 30, "r", 25, 3) == (
        "history diverged: follower r ends at LSN 25 of term 3; this leader has term 5 there", None)


def test_a_leader_whose_history_does_not_reach_back_says_so(tmp_path: Path) -> None:
    h = TermHistory(tmp_path)
    h.reset(4, 100)  # installed a snapshot at LSN 100: nothing known before it
    assert divergence(h, 120, "r", 50, 1) == ("leader's history does not reach back to LSN 50", None)
