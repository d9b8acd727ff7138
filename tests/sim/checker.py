"""The invariants, checked as the simulation runs (after every event) and once
more after every fault is healed. A broken one raises ``Violation``.

- **one acknowledger**: the acknowledgements of each leadership stint (node,
  term) form an interval in time, and no two stints' intervals overlap: at no
  instant do two nodes acknowledge writes for the shard (both modes);
- **sync durability**: every write acknowledged in sync mode is durable, at its
  LSN and term, on every member of the sync set published in etcd (the only
  nodes that may take over) at the moment it is acknowledged and whenever a
  new set is published; it is never cut from any node; after healing, the
  leader holds it;
- **terms**: a node's highest term never falls (crashes included), and every
  promotion is to a term above every earlier promotion;
- **reads**: a leader accepts a follower's history (and so opens its read fence)
  only when that history really is a prefix of its own; in sync mode no node
  ever has records cut that it served reads from (replicas included: they show
  only up to the commit LSN their leader told them, on records and heartbeats);
  in async mode replicas show what they hold, so such cuts are counted, and
  fail the run only with ``strict_reads``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sutra_cluster.failover.coordinator import SyncState
from sutra_cluster.roles import Role

if TYPE_CHECKING:
    from tests.sim.cluster import SimCluster
    from tests.sim.node import Record, SimNode


class Violation(AssertionError):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class Checker:
    def __init__(self, cluster: SimCluster, strict_reads: bool = False) -> None:
        self.c = cluster
        self.strict_reads = strict_reads
        self.acked: dict[int, tuple[int, int, str, float]] = {}  # write id -> (lsn, term, node, time)
        self.stints: dict[tuple[str, int], tuple[float, float]] = {}
        self.current: tuple[str, int] | None = None
        self.highest: dict[str, int] = {}
        self.top_lead_term = 0
        self.sync_raw: str | None = None
        self.sync_members: tuple[str, ...] = ()
        self.lost = 0  # acknowledged writes cut (async mode: counted, not a violation)
        self.exposed_cuts = 0  # records served as reads, then cut (replicas of a deposed leader)
        self.violation: Violation | None = None

    def fail(self, kind: str, detail: str) -> None:
        v = Violation(kind, f"t={self.c.sched.now:.3f}s: {detail}")
        if self.violation is None:
            self.violation = v
        raise v

    # ---- events from the nodes ---------------------------------------------------------
    def on_lead(self, node: SimNode, term: int, lsn: int) -> None:
        self.c.stats.failovers += 1
        if term <= self.top_lead_term:
            self.fail("terms", f"{node.id} promoted at term {term}, not above term {self.top_lead_term} "
                               "an earlier leader used")
        self.top_lead_term = term

    def on_ack(self, node: SimNode, wid: int, lsn: int, term: int) -> None:
        now = self.c.sched.now
        stint = (node.id, term)
        cur = self.current
        if stint != cur:
            if stint in self.stints:
                first, last = self.stints[stint]
                assert cur is not None
                self.fail("two acknowledgers", f"{node.id} (term {term}) acknowledged write {wid} at LSN {lsn} after "
                          f"{cur[0]} (term {cur[1]}) had acknowledged writes since t={self.stints[cur][0]:.3f}s; "
                          f"{node.id} acknowledged from t={first:.3f}s to t={last:.3f}s before that")
            if cur is not None and self.stints[cur][1] >= now:
                self.fail("two acknowledgers", f"{node.id} (term {term}) and {cur[0]} (term {cur[1]}) "
                                               "acknowledged writes at the same instant")
            self.stints[stint] = (now, now)
            self.current = stint
        else:
            self.stints[stint] = (self.stints[stint][0], now)
        self.acked[wid] = (lsn, term, node.id, now)
        self.c.stats.acked += 1
        if self.c.rules.mode == "sync":
            self._published()  # a set published in this very event counts already
            for m in self.sync_members:
                self._holds(m, wid, lsn, term, "acknowledged")

    def _holds(self, member: str, wid: int, lsn: int, term: int, when: str) -> None:
        n = self.c.nodes.get(member)
        if n is None:
            return
        if n.durable < lsn or n.log[lsn - 1] != (term, wid):
            have = "nothing durable there" if n.durable < lsn else f"record {n.log[lsn - 1]}"
            self.fail("sync durability", f"write {wid} (LSN {lsn}, term {term}) {when}, but sync-set member "
                      f"{member} has {have} (durable LSN {n.durable}); sync set {list(self.sync_members)}")

    def on_accept(self, leader: SimNode, follower: SimNode, last_lsn: int) -> None:
        mine, theirs = leader.log[:last_lsn], follower.log[:last_lsn]
        if mine != theirs:
            at = next(i for i in range(min(len(mine), len(theirs))) if mine[i] != theirs[i]) + 1 \
                if any(a != b for a, b in zip(mine, theirs, strict=False)) else min(len(mine), len(theirs)) + 1
            self.fail("reads", f"{leader.id} accepted {follower.id}'s history up to LSN {last_lsn} as a prefix of "
                               f"its own, but they differ from LSN {at}")

    def on_cut(self, node: SimNode, after: int, records: list[Record], how: str) -> None:
        lost = [(after + i + 1, r) for i, r in enumerate(records) if r[1] and self.acked.get(r[1], (0, 0))[:2]
                == (after + i + 1, r[0])]
        if lost:
            self.lost += len(lost)
            if self.c.rules.mode == "sync":
                lsn, (term, wid) = lost[0]
                self.fail("sync durability", f"{node.id} cut {len(records)} record(s) after LSN {after} ({how}), "
                          f"among them {len(lost)} acknowledged write(s), first write {wid} at LSN {lsn} term {term}")
        if node.alive and node.read_fence is None and node.role != Role.LEADER:
            node.exposed = max(node.exposed, node.visible_limit())  # it served reads up to this very moment
        if node.exposed > after and any(wid for _, wid in records[: node.exposed - after]):
            self.exposed_cuts += 1
            if self.strict_reads or self.c.rules.mode == "sync":
                self.fail("reads", f"{node.id} served reads up to LSN {node.exposed}, then cut everything after "
                                   f"LSN {after} ({how})")

    # ---- after every event ----------------------------------------------------------------
    def step(self) -> None:
        """After every event: only what any event may change cheaply is looked at
        here; terms and exposure are checked on each node's tick (``tick``)."""
        self._published()

    def tick(self, n: SimNode) -> None:
        h = n.terms.highest
        if h < self.highest.get(n.id, 0):
            self.fail("terms", f"{n.id}'s highest term fell from {self.highest[n.id]} to {h}")
        self.highest[n.id] = h
        if n.alive and n.read_fence is None:
            top = n.visible_limit()
            if top > n.exposed and n.role != Role.LEADER:
                self.c.stats.replica_shown += top - n.exposed
            if top > n.exposed:
                n.exposed = top

    def _published(self) -> None:
        """Follow the sync set in etcd; a new one must hold every acknowledged write."""
        raw = self.c.store.kv.get(self.c.prefix + "sync")
        value = raw[0] if raw is not None else None
        if value != self.sync_raw:
            self.sync_raw = value
            self.sync_members = SyncState.decode(value).members if value is not None else ()
            if self.c.rules.mode == "sync":
                for wid, (lsn, term, _, _) in self.acked.items():
                    for m in self.sync_members:
                        self._holds(m, wid, lsn, term, "was acknowledged earlier")

    # ---- after healing ------------------------------------------------------------------------
    def final(self) -> None:
        """Every fault was healed long enough ago: one leader, every node holds its
        log, and (sync mode) every acknowledged write is on it."""
        c = self.c
        leaders = [n for n in c.nodes.values() if n.alive and n.role == Role.LEADER]
        if len(leaders) != 1:
            self.fail("liveness", f"{len(leaders)} leader(s) {[n.id for n in leaders]} after healing")
        lead = leaders[0]
        if c.rules.mode == "sync":
            for wid, (lsn, term, _, _) in self.acked.items():
                if lead.durable < lsn or lead.log[lsn - 1] != (term, wid):
                    self.fail("sync durability", f"write {wid} (LSN {lsn}, term {term}) was acknowledged and is "
                                                 f"not on the leader {lead.id} after healing")
        for n in c.nodes.values():
            if n is not lead and n.log[: n.durable] != lead.log[: lead.durable]:
                self.fail("liveness", f"{n.id} (durable LSN {n.durable}) has not converged on the leader "
                                      f"{lead.id} (durable LSN {lead.durable}) after healing")
