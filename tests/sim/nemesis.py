"""Fault schedules: a seeded list of (time, operation) the simulator applies,
in any order and any combination. An operation that does not apply (restart a
live node, heal an intact link) does nothing, so any subset of a schedule is
itself a valid schedule: that is what lets the shrinker drop events freely."""

from __future__ import annotations

import random
from dataclasses import dataclass

from tests.sim.cluster import SimCluster
from tests.sim.world import DROP, REJECT

# Episodes: a fault and (usually) its end, some time later. Weights are relative.
EPISODES = (
    ("crash", "restart", 5), ("pause", "resume", 2), ("cut", "heal", 3), ("isolate", "rejoin", 2),
    ("etcd_down", "etcd_up", 1), ("etcd_cut", "etcd_heal", 2), ("slow_disk", "fast_disk", 1),
    ("slow_etcd", "fast_etcd", 2),
)
# Targets are named by role and resolved when the fault happens (FoundationDB's
# nemeses aim at roles too): the leader, a member of the published sync set, a
# node that is neither, or a fixed node.
ROLES = ("leader", "sync", "other", "n1", "n2", "n3")


@dataclass(frozen=True)
class Fault:
    t: float
    op: str
    a: str = ""
    b: str = ""
    mode: str = ""
    ep: int = 0  # the episode: its end acts on the node(s) its start resolved
    x: float = 0.0  # slow_etcd: seconds per call

    def __str__(self) -> str:
        args = " ".join(x for x in (self.a, self.b, self.mode, f"{self.x * 1000:.0f} ms" if self.x else "") if x)
        return f"t={self.t:6.3f}s #{self.ep} {self.op} {args}".rstrip()


def generate(seed: int, ids: list[str], count: int, start: float, end: float) -> list[Fault]:
    """``count`` episodes starting at random times in [start, end), each lasting
    0.05 s to 2.5 s (or until every fault is healed at ``end``), drawn from their
    own random stream, so the schedule does not depend on how the run goes."""
    rng = random.Random(seed * 7919 + 17)
    kinds = list(EPISODES)
    weights = [e[2] for e in EPISODES]
    out = []
    for ep in range(1, count + 1):
        begin, finish, _ = rng.choices(kinds, weights)[0]
        a = rng.choice(ROLES)
        b = rng.choice([r for r in ROLES if r != a]) if begin == "cut" else ""
        mode = rng.choice((DROP, REJECT)) if begin in ("cut", "isolate") else ""
        t0 = round(rng.uniform(start, end), 3)
        x = 0.0
        if begin == "slow_etcd":
            a = rng.choice((*ROLES, "all", "all"))
            x = round(rng.uniform(0.02, 0.4), 3)  # around SUTRA_RETRY_TIMEOUT_MS, both sides of it
        out.append(Fault(t0, begin, a, b, mode, ep, x))
        if rng.random() < 0.85:
            t1 = round(t0 + rng.uniform(0.05, 2.5), 3)
            if t1 < end:
                out.append(Fault(t1, finish, ep=ep))
    return sorted(out, key=lambda f: (f.t, f.ep))


def empty_set_plan(seed: int, start: float, end: float) -> list[Fault]:
    """A schedule aimed at a sync set that shrinks to empty after it acknowledged
    writes, and then loses its leader: the corner where an empty set's floor
    decides who may take over (``decide._sync_holders``). Random schedules
    reach it rarely (it needs three faults in this order), so here the order is
    fixed and the timing, targets and ways of failing are drawn:

    1. a replica is put in a position the floor must not count: behind within the
       leader's term (its link from the leader dropped, or its disk slow), or with a
       longer log of an older term (a leader cut from both replicas and etcd logs
       writes it cannot acknowledge until its lease ends, while a replica takes over
       and acknowledges writes with a new set; it then reaches etcd again);
    2. the sync set loses its member (crash, pause, or its link from the leader
       cut), so the leader publishes the set empty, with its floor;
    3. the leader dies (crash or pause), and maybe comes back later.
    """
    rng = random.Random(seed * 104729 + 3)
    out: list[Fault] = []

    def episode(ep: int, t0: float, begin: str, finish: str, a: str, b: str = "", mode: str = "",
                last: float = 0.0, ends: float = 0.6) -> None:
        if t0 >= end:  # past the heal: every fault is healed then, and one after it would never be
            return
        out.append(Fault(round(t0, 3), begin, a, b, mode, ep))
        if rng.random() < ends:
            t1 = round(rng.uniform(max(t0, last) + 0.2, end + 0.5), 3)
            if t1 < end:
                out.append(Fault(t1, finish, ep=ep))

    t = rng.uniform(start, start + 0.8)
    older = rng.random() < 0.5
    if not older:  # behind within the term
        if rng.random() < 0.5:
            episode(1, t, "cut", "heal", "leader", "other", DROP, last=end)
        else:
            episode(1, t, "slow_disk", "fast_disk", "other", last=end)
        t += rng.uniform(0.3, 1.2)
    else:  # an older term's longer log. The other replica falls behind (so the next leader's set starts
        # empty); the leader, cut from both replicas (reset links) and from etcd, logs writes it cannot
        # acknowledge until its lease runs out; its sync member takes over, the other catches up, joins
        # and acknowledges writes; the old leader reaches etcd again, still cut from the replicas.
        episode(5, t, "slow_disk", "fast_disk", "other", ends=0.0)
        out.append(Fault(round(t + rng.uniform(0.8, 1.8), 3), "fast_disk", ep=5))
        t += rng.uniform(0.2, 0.5)
        episode(1, t, "isolate", "rejoin", "leader", mode=REJECT, last=end)
        out.append(Fault(round(t, 3), "etcd_cut", "leader", ep=4))
        out.append(Fault(round(t + rng.uniform(1.6, 2.6), 3), "etcd_heal", ep=4))
        t += rng.uniform(1.0, 2.4)
    # A crash or a reset link ends the member's stream, so the set shrinks; a pause or dropped
    # packets only stall it, and a stalled member stays while no caught-up replica can replace it.
    # With an older term's log waiting, the member that would outrank it (a newer term) is crashed.
    how = "crash" if older else rng.choices(("crash", "cut", "pause"), (6, 3, 1))[0]
    if how == "cut":
        episode(2, t, "cut", "heal", "leader", "sync", rng.choice((REJECT, REJECT, DROP)), last=t + 1.0, ends=0.4)
    else:
        episode(2, t, how, "restart" if how == "crash" else "resume", "sync", last=t + 1.0, ends=0.4)
    t += rng.uniform(0.2, 1.5)  # the leader sees the member go and publishes the set empty
    how = rng.choice(("crash", "crash", "pause"))
    episode(3, t, how, "restart" if how == "crash" else "resume", "leader", last=t + 1.0)
    return sorted(out, key=lambda f: (f.t, f.ep))


class Resolver:
    """Turns role names into node ids when a fault happens, and remembers them
    per episode for its end."""

    def __init__(self) -> None:
        self.eps: dict[int, tuple[str, ...]] = {}

    def node(self, c: SimCluster, role: str, avoid: str = "") -> str:
        if role in c.nodes:
            return role
        leaders = [n.id for n in c.nodes.values() if n.alive and n.role == "leader" and n.id != avoid]
        sync = [m for m in c.check.sync_members if m != avoid]
        if role == "leader":
            pool = leaders
        elif role == "sync":
            pool = sync
        else:
            pool = [n for n in c.ids if n not in leaders and n not in sync and n != avoid]
        pool = pool or [n for n in c.ids if n != avoid]
        return pool[0]


def apply(c: SimCluster, f: Fault, r: Resolver) -> None:
    op = f.op
    if op in ("restart", "resume", "heal", "rejoin", "etcd_up", "etcd_heal", "fast_disk", "fast_etcd"):
        if f.ep not in r.eps:
            return  # its start was shrunk away
        nodes = r.eps.pop(f.ep)
        if op == "restart":
            c.restart(nodes[0])
        elif op == "resume":
            c.resume(nodes[0])
        elif op == "heal":
            c.heal(nodes[0], nodes[1])
        elif op == "rejoin":
            for other in c.ids:
                if other != nodes[0]:
                    c.heal(nodes[0], other)
        elif op == "etcd_up":
            c.store.down = False
        elif op == "etcd_heal":
            c.etcd_cut.discard(nodes[0])
        elif op == "fast_etcd":
            for n in nodes:
                c.etcd_latency.pop(n, None)
        else:
            c.nodes[nodes[0]].slow_disk = False
        return
    if op == "etcd_down":
        c.store.down = True
        r.eps[f.ep] = ()
        return
    if op == "slow_etcd":
        nodes = tuple(c.ids) if f.a == "all" else (r.node(c, f.a),)
        r.eps[f.ep] = nodes
        for n in nodes:
            c.etcd_latency[n] = f.x
        return
    a = r.node(c, f.a)
    r.eps[f.ep] = (a,)
    if op == "crash":
        c.crash(a)
    elif op == "pause":
        c.pause(a)
    elif op == "cut":
        b = r.node(c, f.b, avoid=a)
        r.eps[f.ep] = (a, b)
        c.cut(a, b, f.mode)
    elif op == "isolate":
        for other in c.ids:
            if other != a:
                c.cut(a, other, f.mode)
    elif op == "etcd_cut":
        c.etcd_cut.add(a)
    elif op == "slow_disk":
        c.nodes[a].slow_disk = True
    else:
        raise ValueError(f"unknown fault {op!r}")
