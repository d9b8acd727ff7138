"""What a leader may acknowledge: replica positions, the sync set, and the
highest LSN acknowledged so far. Pure bookkeeping (no threads, clocks or I/O):
``LeaderStreams`` calls it under its own lock with its own clock, and the HA
simulator (tests/sim) calls the very same code with simulated time.

The invariant this class keeps (Patroni's ``QuorumStateResolver`` states the
same one): in sync mode, every replica counted for a commit is a member of the
sync set published in etcd, and every published member holds every
acknowledged write. Three rules make it hold:

- A new term starts with ``committed`` at the new leader's first LSN: an earlier
  leader may have acknowledged anything this node holds, so a replica joins the
  sync set only once it has flushed all of it (``lead``).
- A write is acknowledged only when ``required`` counted members flushed it, and
  ``committed`` rises in the same step (``try_commit``), so a joiner measured
  against ``committed`` can never miss a write acknowledged at that moment.
- Members leave the counted set before a new set is published, and join it only
  after the publication succeeded (``plan`` / ``shrink`` / ``adopt``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sutra_cluster.roles import CommitMode


@dataclass
class ReplicaPosition:
    """The leader's view of one replica's stream."""

    flushed: int = 0
    last_ack: float = 0.0  # the caller's clock when it last acknowledged anything
    connected: bool = True


def next_sync_set(current: tuple[str, ...], connected: dict[str, int], n: int, commit_lsn: int) -> tuple[str, ...]:
    """The sync set a leader should publish next.

    Members stay while connected. A replica joins only once it has flushed
    everything acknowledged so far (``commit_lsn``), so every member of the
    published set always holds every acknowledged write. Sorted for stability.
    """
    keep = [m for m in current if m in connected]
    if len(keep) < n:
        for node, flushed in sorted(connected.items(), key=lambda kv: (-kv[1], kv[0])):
            if node not in keep and flushed >= commit_lsn:
                keep.append(node)
            if len(keep) >= n:
                break
    return tuple(sorted(keep[:n] if len(keep) > n else keep))


class SyncCommit:
    """Commit bookkeeping for one leader term.

    ``managed``: the sync set is published in etcd and only its members count.
    Without etcd (manual clusters) any connected replica counts (``members`` is None).
    ``fallback``: SUTRA_SYNC_FALLBACK, degrade to async while too few replicas are connected.
    """

    def __init__(self, mode: CommitMode, required: int, *, managed: bool, fallback: bool = False) -> None:
        self.mode = mode
        self.required = required
        self.managed = managed
        self.fallback = fallback
        self.replicas: dict[str, ReplicaPosition] = {}
        self.members: tuple[str, ...] | None = () if managed else None
        self.committed = 0

    # ---- the term --------------------------------------------------------------
    def lead(self, from_lsn: int) -> None:
        """A new term starts at ``from_lsn`` (the LSN of its term record).

        Everything this node holds below it may have been acknowledged by an
        earlier leader, so nothing that lacks it may join the sync set."""
        self.committed = from_lsn
        self.members = () if self.managed else None
        self.replicas.clear()

    # ---- replica positions ---------------------------------------------------------
    def connect(self, node_id: str, flushed: int, now: float) -> ReplicaPosition:
        pos = ReplicaPosition(flushed=flushed, last_ack=now)
        self.replicas[node_id] = pos
        return pos

    def ack(self, pos: ReplicaPosition, flushed: int, now: float) -> None:
        """A replica reported ``flushed``. Positions never move backwards within a
        stream (a replica that rewinds reconnects with a new hello)."""
        pos.flushed = max(pos.flushed, flushed)
        pos.last_ack = now

    def disconnect(self, pos: ReplicaPosition) -> None:
        pos.connected = False

    def forget(self, node_id: str, pos: ReplicaPosition) -> None:
        """Drop a gone replica's position (unless a newer stream replaced it)."""
        if self.replicas.get(node_id) is pos:
            del self.replicas[node_id]

    def connected(self) -> dict[str, int]:
        return {n: p.flushed for n, p in self.replicas.items() if p.connected}

    # ---- commits -------------------------------------------------------------------
    def _counted(self) -> list[ReplicaPosition]:
        ids = self.members
        return [p for n, p in self.replicas.items() if p.connected and (ids is None or n in ids)]

    def degraded(self) -> bool:
        return self.fallback and len(self.connected()) < self.required

    def waits_for_replicas(self) -> bool:
        """True when a write needs replicas' acknowledgements to commit."""
        return self.mode == CommitMode.SYNC and not self.degraded()

    def acknowledged(self, lsn: int) -> int:
        """How many counted replicas flushed ``lsn``."""
        return sum(1 for p in self._counted() if p.flushed >= lsn)

    def try_commit(self, lsn: int) -> bool:
        """Commit ``lsn`` if it may be acknowledged now; ``committed`` rises in the same step."""
        if self.waits_for_replicas() and self.acknowledged(lsn) < self.required:
            return False
        self.committed = max(self.committed, lsn)
        return True

    def committable(self) -> int | None:
        """The highest LSN ``try_commit`` would accept now: None when any LSN would
        (no replica needed), 0 when none would (too few counted replicas)."""
        if not self.waits_for_replicas() or self.required <= 0:
            return None
        flushed = sorted((p.flushed for p in self._counted()), reverse=True)
        return flushed[self.required - 1] if len(flushed) >= self.required else 0

    def commit_lsn(self, durable: int, applied: int) -> int:
        """Highest LSN that may become visible to reads: durable here and, in sync
        mode, flushed by ``required`` counted replicas (else what is visible already)."""
        if not self.waits_for_replicas():
            return durable
        flushed = sorted((p.flushed for p in self._counted()), reverse=True)
        n = self.required
        return min(durable, flushed[n - 1]) if len(flushed) >= n else applied

    # ---- the sync set --------------------------------------------------------------
    def plan(self, now: float, stall_s: float, grace: dict[str, int] | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(members to keep counting now, the set to publish next).

        ``grace``: members chosen at election and not connected yet, with the LSN
        they published; they are kept while the caller's grace period lasts.
        A connected member that has not acknowledged for ``stall_s`` (paused, or
        its disk hangs) is replaced, but only when a caught-up replica can take
        its place: a set that shrinks would leave no one to fail over to.
        """
        current = self.members or ()
        connected = self.connected()
        for node, flushed in (grace or {}).items():
            if node in current:
                connected.setdefault(node, flushed)
        wanted = next_sync_set(current, connected, self.required, self.committed)
        stalled = {n for n, p in self.replicas.items() if p.connected and now - p.last_ack > stall_s}
        if stalled & set(wanted):
            responsive = {n: f for n, f in connected.items() if n not in stalled}
            alt = next_sync_set(tuple(m for m in current if m in responsive), responsive, self.required, self.committed)
            if len(alt) >= len(wanted):
                wanted = alt
        keep = tuple(m for m in current if m in wanted)
        return keep, wanted

    def shrink(self, keep: tuple[str, ...]) -> None:
        """Stop counting members that are about to leave (before publishing)."""
        current = self.members or ()
        self.members = tuple(m for m in current if m in keep)

    def adopt(self, published: tuple[str, ...]) -> None:
        """The set ``published`` is now in etcd: count its members. A joiner that
        no longer holds everything committed (it cannot happen while the caller
        shrank first, but the invariant is cheap to re-check) is not counted."""
        current = set(self.members or ())
        ok = []
        for m in published:
            pos = self.replicas.get(m)
            if m in current or (pos is not None and pos.flushed >= self.committed):
                ok.append(m)
        self.members = tuple(ok)

    def floor(self) -> int | None:
        """With no member counted, the highest LSN any acknowledgement covers: nothing
        above ``committed`` commits until a member is counted, and a member is counted
        only once a set naming it is published. None where a write may commit without
        a counted replica (async mode, no required replicas, SUTRA_SYNC_FALLBACK)."""
        if self.mode != CommitMode.SYNC or self.required <= 0 or self.fallback or not self.managed:
            return None
        return self.committed

    def count_all(self, members: tuple[str, ...]) -> None:
        """Count exactly ``members`` (the first set at election: replicas that froze
        at this node's position, published before anything is acknowledged)."""
        self.members = members
