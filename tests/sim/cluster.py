"""One simulated shard: three (or more) SimNodes, each driven by a real
``HaLoop`` (ticked here, its thread never started) over a real
``MemoryCoordinator`` on one real ``MemoryStore`` that reads the simulated
clock; a client that writes to every node that believes it leads; and the
fault operations the nemesis calls."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sutra_cluster.config import Config, timing_problems
from sutra_cluster.failover.coordinator import Coordinator
from sutra_cluster.failover.memory import MemoryCoordinator, MemoryStore
from sutra_cluster.replication.commit import SyncCommit
from tests.sim.checker import Checker
from tests.sim.etcd import EtcdLink, TickThread
from tests.sim.node import HEARTBEAT_S, SimNode, addr, node_of
from tests.sim.streams import Wire
from tests.sim.world import REJECT, Network, Scheduler

PREFIX = "/sutra/shards/0/"


@dataclass(frozen=True)
class Rules:
    """What is under test: the real rules unless a test swaps one for a broken one."""

    mode: str = "sync"
    nodes: int = 3
    sync_replicas: int = 1
    sync_factory: Callable[..., SyncCommit] = SyncCommit
    # Builds the HA loop for one node: (port, coordinator, cfg, clock, probe) -> loop with tick().
    loop_factory: Callable[..., Any] | None = None
    # What a replica shows to reads in sync mode: "commit", the real rule (the leader's commit LSN as
    # last told, on records and heartbeats), or "durable" (a broken rule: all it holds).
    replica_shows: str = "commit"
    name: str = "real rules"


def default_loop(port: Any, coord: Coordinator, cfg: Config, clock: Callable[[], float],
                 probe: Callable[[str], bool]) -> Any:
    from sutra_cluster.failover.loop import HaLoop

    return HaLoop(port, coord, cfg, clock=clock, probe=probe)


@dataclass
class Stats:
    writes: int = 0
    acked: int = 0
    failovers: int = 0
    replica_shown: int = 0  # records replicas made visible to reads (so the reads check is not vacuous)
    lost_tail_held: int = 0  # crashes that lost records a replica had already been streamed
    tick_errors: list[str] = field(default_factory=list)


class SimCluster:
    def __init__(self, seed: int, rules: Rules) -> None:
        self.rules = rules
        self.prefix = PREFIX
        self.sched = Scheduler(seed)
        self.net = Network(self.sched)
        self.wire = Wire(self)
        self.store = MemoryStore()
        self.store.now = self.sched.clock
        self.etcd_cut: set[str] = set()
        self.etcd_latency: dict[str, float] = {}  # seconds per etcd call, per node
        self.ticking: dict[str, TickThread] = {}
        self.stall_s = 0.5
        self.ids = [f"n{i + 1}" for i in range(rules.nodes)]
        self.cfgs = {n: self._config(n) for n in self.ids}
        self.cfg = self.cfgs[self.ids[0]]
        problems = timing_problems(self.cfg)
        assert not problems, problems
        self.check = Checker(self)
        self.stats = Stats()
        self.nodes: dict[str, SimNode] = {n: SimNode(self, n, rules.sync_factory) for n in self.ids}
        self.loops: dict[str, Any] = {}
        self.writing = True
        self._wid = 0
        for n in self.ids:
            self._boot(n)
        self.sched.after(0.01, self._client)

    def _config(self, node_id: str) -> Config:
        r = self.rules
        return Config(node_id=node_id, advertise=addr(node_id), role="leader" if node_id == "n1" else "replica",
                      commit_mode=r.mode, sync_replicas=r.sync_replicas, etcd_endpoints=("etcd:2379",),
                      leader="" if node_id == "n1" else addr("n1"))

    # ---- processes -----------------------------------------------------------------
    def _boot(self, n: str) -> None:
        cfg = self.cfgs[n]
        inner = MemoryCoordinator(self.store, PREFIX, n, ttl=cfg.lease_ttl_s, member_ttl=2.0 * cfg.lease_ttl_s)
        factory = self.rules.loop_factory or default_loop
        self.loops[n] = factory(self.nodes[n], EtcdLink(inner, self, n), cfg, self.sched.clock, self._prober(n))
        jitter = self.sched.rng.uniform(0.0, 0.1)
        self.sched.after(jitter, self._tick, n, node=n)
        self.sched.after(jitter + HEARTBEAT_S / 2, self.nodes[n].timer, node=n)

    def _prober(self, n: str) -> Callable[[str], bool]:
        def probe(address: str) -> bool:
            target = self.nodes.get(node_of(address))
            return target is None or not target.alive or self.net.link(n, target.id) == REJECT

        return probe

    def _tick(self, n: str) -> None:
        self.check.tick(self.nodes[n])
        if self.etcd_latency.get(n, 0.0) > 0:
            t = TickThread(self, n, lambda: self._tick_body(n))
            self.ticking[n] = t
            t.start()
        else:
            self._tick_body(n)

    def _tick_body(self, n: str) -> None:
        try:
            self.loops[n].tick()
        except AssertionError:
            raise
        except Exception as exc:  # HaLoop._run logs a failed tick and goes on
            self.stats.tick_errors.append(f"t={self.sched.now:.3f} {n}: {type(exc).__name__}: {exc}")
        wait = self.cfgs[n].loop_wait_ms / 1000.0
        self.sched.after(wait + self.sched.rng.uniform(0.0, 0.01), self._tick, n, node=n)

    def _client(self) -> None:
        if not self.writing:
            return
        for node in self.nodes.values():
            if node.alive and node.role == "leader":
                self._wid += 1
                self.stats.writes += 1
                self.sched.after(self.net.delay(), node.client_write, self._wid, node=node.id)
        self.sched.after(self.sched.rng.uniform(0.01, 0.05), self._client)

    # ---- faults --------------------------------------------------------------------
    def crash(self, n: str) -> None:
        node = self.nodes[n]
        if not node.alive:
            return
        t = self.ticking.pop(n, None)
        if t is not None:
            t.kill()
        self.sched.kill(n)
        for s in self.wire.of(n):
            other = s.follower if s.leader == n else s.leader
            self.wire.reset(s, (other,))
        node.crash()
        self.loops.pop(n, None)

    def restart(self, n: str) -> None:
        node = self.nodes[n]
        if node.alive:
            return
        node.restart()
        self._boot(n)

    def pause(self, n: str) -> None:
        if self.nodes[n].alive:
            self.sched.pause(n)

    def resume(self, n: str) -> None:
        self.sched.resume(n)

    def cut(self, a: str, b: str, mode: str) -> None:
        self.net.cut(a, b, mode)
        if mode == REJECT:
            for s in self.wire.between(a, b):
                self.wire.reset(s, (s.leader, s.follower), force=True)

    def heal(self, a: str, b: str) -> None:
        self.net.heal(a, b)
        self.wire.release(a, b)

    def heal_everything(self) -> None:
        """The end of a schedule: every fault is undone, client writes stop."""
        self.writing = False
        for a in self.ids:
            for b in self.ids:
                if a < b:
                    self.heal(a, b)
        self.store.down = False
        self.etcd_cut.clear()
        self.etcd_latency.clear()
        for n in self.ids:
            self.resume(n)
            self.restart(n)
            self.nodes[n].slow_disk = False

    def run(self, until: float) -> None:
        self.sched.run_until(until, self.check.step)

    def close(self) -> None:
        """End every tick still waiting on etcd (its thread ends with it)."""
        for t in self.ticking.values():
            t.kill()
        self.ticking.clear()
