"""WAL streams between simulated nodes: one ordered channel each way, which
holds its messages while the link drops packets (TCP retransmits them once the
link heals: the real channels set no keepalive, so a silent link never ends a
stream by itself) and loses them when the stream is reset."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sutra_cluster.replication.commit import ReplicaPosition

if TYPE_CHECKING:
    from tests.sim.cluster import SimCluster

from tests.sim.world import DROP


@dataclass
class Channel:
    src: str
    dst: str
    last_arrival: float = 0.0
    held: list[tuple[Callable[..., None], tuple[Any, ...]]] = field(default_factory=list)


@dataclass
class Stream:
    """One StreamWal call: ``follower`` asked ``leader`` (at ``term``) for records."""

    sid: int
    leader: str
    follower: str
    term: int
    down: Channel  # leader -> follower
    up: Channel  # follower -> leader
    open: bool = True
    sent: int = 0  # the leader's position in this stream
    pos: ReplicaPosition | None = None  # the leader's SyncCommit entry for it


class Wire:
    """Delivers messages on channels with the network's delays and link states."""

    def __init__(self, cluster: SimCluster) -> None:
        self.c = cluster
        self.streams: list[Stream] = []
        self._sid = 0

    def open(self, leader: str, follower: str, term: int) -> Stream:
        self._sid += 1
        s = Stream(self._sid, leader, follower, term, Channel(leader, follower), Channel(follower, leader))
        self.streams.append(s)
        return s

    def send(self, ch: Channel, fn: Callable[..., None], *args: Any, force: bool = False) -> None:
        """Queue ``fn(*args)`` to run on ``ch.dst`` (bound to its current life)."""
        net = self.c.net
        if net.link(ch.src, ch.dst) == DROP and not force:
            ch.held.append((fn, args))
            return
        t = max(self.c.sched.now + net.delay(), ch.last_arrival)
        ch.last_arrival = t
        self.c.sched.at(t, fn, *args, node=ch.dst)

    def release(self, a: str, b: str) -> None:
        """The link between a and b healed: held messages go out, in order."""
        for s in self.streams:
            for ch in (s.down, s.up):
                if {ch.src, ch.dst} == {a, b} and ch.held:
                    held, ch.held = ch.held, []
                    for fn, args in held:
                        self.send(ch, fn, *args)

    def reset(self, s: Stream, notify: tuple[str, ...], force: bool = False) -> None:
        """The stream dies; the named ends learn of it, through the link as it is
        (a reset from a dead process is held by a dropping link) or at once (``force``:
        the firewall itself answers with a reset)."""
        if not s.open:
            return
        s.open = False
        s.down.held.clear()
        s.up.held.clear()
        for end in notify:
            node = self.c.nodes[end]
            ch = s.down if end == s.follower else s.up
            self.send(ch, node.stream_closed, s, force=force)
        self.streams = [x for x in self.streams if x.open]

    def between(self, a: str, b: str) -> list[Stream]:
        return [s for s in self.streams if {s.leader, s.follower} == {a, b}]

    def of(self, node: str) -> list[Stream]:
        return [s for s in self.streams if node in (s.leader, s.follower)]
