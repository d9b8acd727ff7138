"""The node side of resharding: ``sutra.reshard.ReshardService`` on every node.

Only a shard's leader answers (a replica says ``not-leader``, so the driver's
shard link finds the leader and asks again). Every call carries the map the
driver works by (``map_json``): the reshard under way is its ``next_shards``.

- ``Export``: the moving keys this shard owns, taken from one consistent copy
  of the applied state (the same capture a checkpoint takes) at LSN L.
- ``Tail``: records after an LSN, up to the applied LSN (so only committed
  ones: in sync mode nothing a failover could take back), each cut to what
  concerns each target shard:
  - its *moving part*: concepts, associations (by source) and deletes of keys
    that target will own, under the record's own request id (a client's retry
    after the switch then finds it on the target and is not applied twice);
  - a *purge* for every other delete, unless the target owns that concept now:
    the target may hold copied edges into the deleted concept.
- ``Freeze``: adopt a frozen map, then read the last LSN under the append lock
  (see api/shard_guard.py: no moving-key record can follow it).
- ``Import``: a target logs a part through its normal write path (WAL, sync
  replication), admitted only if it owns every key of it under the next map.
- ``Purge``: drop (``WalBatch.drop_concept_ids``) the concepts this shard holds
  but does not own under a map, with their outgoing edges.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from sutra_cluster.api.shard_guard import ShardGuard, internal_writes
from sutra_cluster.api.status import grpc_errors
from sutra_cluster.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotLeader, Unavailable
from sutra_cluster.pb import reshard_pb2 as rpb
from sutra_cluster.pb import reshard_pb2_grpc, storage_pb2, wal_pb2
from sutra_cluster.roles import Role
from sutra_cluster.sharding.shardmap import ShardMap
from sutra_cluster.storage.batch import request_fingerprint
from sutra_cluster.storage.engine import Engine
from sutra_cluster.storage.wal_format import RT_BATCH

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
CHUNK_ITEMS = 2000
HEARTBEAT_S = 0.2
PURGE_LIMIT = 10_000
FREEZE_WAIT_S = 5.0  # for prepared cross-shard parts on moving keys to be decided


def parse_map(raw: str, *, reshard: bool = True) -> ShardMap:
    if not raw:
        raise InvalidArgument("map_json is empty: every reshard call names the map it works by")
    m = ShardMap.from_json(raw)
    if reshard and not m.next_shards:
        raise InvalidArgument(f"map_json (version {m.version}) has no next_shards: no reshard is under way in it")
    return m


def moving_parts(shard: int, m: ShardMap, batch: wal_pb2.WalBatch) -> dict[int, list[wal_pb2.WalBatch]]:
    """What of one logged batch of ``shard`` each target shard must apply (see the module doc)."""
    out: dict[int, list[wal_pb2.WalBatch]] = {}
    parts: dict[int, wal_pb2.WalBatch] = {}
    rid = batch.request_id

    def part(t: int) -> wal_pb2.WalBatch:
        if t not in parts:
            parts[t] = wal_pb2.WalBatch(request_id=rid)
        return parts[t]

    for c in batch.concepts:
        t = m.next_owner(c.concept_id)
        if t != shard:
            part(t).concepts.append(c)
    for a in batch.associations:
        t = m.next_owner(a.source_id)
        if t != shard:
            part(t).associations.append(a)
    targets = sorted(_targets(shard, m))
    purges: dict[int, list[str]] = {}
    for d in batch.delete_concept_ids:
        t = m.next_owner(d)
        if t != shard:
            part(t).delete_concept_ids.append(d)
        for other in targets:
            if other != t and m.owner(d) != other:
                purges.setdefault(other, []).append(d)
    for t, p in parts.items():
        out.setdefault(t, []).append(p)
    for t, ids in purges.items():
        for d in ids:
            out.setdefault(t, []).append(wal_pb2.WalBatch(
                request_id=f"{rid}:purge:{d}" if rid else "", delete_concept_ids=[d]))
    return out


def _targets(shard: int, m: ShardMap) -> set[int]:
    """The shards keys of ``shard`` can move to (jump hash: growing moves keys
    only to the new shards; shrinking only off the removed ones)."""
    if not m.next_shards or m.next_shards == m.shards:
        return set()
    if m.next_shards > m.shards:
        return set(range(m.shards, m.next_shards))
    return set(range(m.next_shards)) if shard >= m.next_shards else set()


def _past(eng: Engine, lsn: int) -> bool:
    return eng.applied_lsn > lsn


def concept_request(cid: str, c: Any) -> storage_pb2.LearnConceptRequest:
    return storage_pb2.LearnConceptRequest(concept_id=cid, content=c.content, strength=c.strength,
                                           confidence=c.confidence, attributes=c.attributes,
                                           embedding_f32=c.embedding)


class ReshardServicer(reshard_pb2_grpc.ReshardServiceServicer):
    def __init__(self, engine: Engine, guard: ShardGuard) -> None:
        self.engine = engine
        self.guard = guard
        self.shard = engine.cfg.shard
        guard.attach(engine)

    def _leader(self) -> None:
        eng = self.engine
        if eng.role != Role.LEADER:
            raise NotLeader(f"this node ({eng.cfg.node_id}) is a replica of shard {self.shard}; reshard calls go "
                            f"to the leader ({eng.leader_address or 'unknown'})")

    # ---- copy ----------------------------------------------------------------
    @grpc_errors
    def Export(self, request: rpb.ExportRequest, context: grpc.ServicerContext) -> Iterator[rpb.ExportChunk]:
        m = parse_map(request.map_json)
        self._leader()
        eng = self.engine
        with eng._lock:  # the checkpoint's consistent capture: applied state at one LSN
            lsn, term = eng.applied_lsn, eng.term
            concepts, edges = eng.state.capture()
        return self._chunks(m, lsn, term, concepts, edges)

    def _chunks(self, m: ShardMap, lsn: int, term: int, concepts: dict[str, Any],
                edges: list[tuple[str, str, int, float]]) -> Iterator[rpb.ExportChunk]:
        parts: dict[int, wal_pb2.WalBatch] = {}
        sizes: dict[int, int] = {}
        sent = False

        def flush(t: int) -> rpb.ExportChunk:
            b = parts.pop(t)
            sizes.pop(t, None)
            return rpb.ExportChunk(lsn=lsn, target_shard=t, batch=b.SerializeToString(), term=term)

        def add(t: int, n: int) -> bool:
            parts.setdefault(t, wal_pb2.WalBatch())
            sizes[t] = sizes.get(t, 0) + n
            b = parts[t]
            return sizes[t] >= CHUNK_BYTES or len(b.concepts) + len(b.associations) >= CHUNK_ITEMS

        for cid, c in concepts.items():
            t = m.next_owner(cid)
            if t == self.shard or m.owner(cid) != self.shard:
                continue
            req = concept_request(cid, c)
            parts.setdefault(t, wal_pb2.WalBatch()).concepts.append(req)
            if add(t, len(c.embedding) + len(c.content) + 64):
                sent = True
                yield flush(t)
        for src, dst, atype, conf in edges:
            t = m.next_owner(src)
            if t == self.shard or m.owner(src) != self.shard:
                continue
            parts.setdefault(t, wal_pb2.WalBatch()).associations.append(storage_pb2.LearnAssociationRequest(
                source_id=src, target_id=dst, assoc_type=atype, confidence=conf))
            if add(t, len(src) + len(dst) + 16):
                sent = True
                yield flush(t)
        for t in sorted(parts):
            sent = True
            yield flush(t)
        if not sent:  # nothing moves from here: still say at which LSN
            yield rpb.ExportChunk(lsn=lsn, target_shard=self.shard, term=term)

    # ---- catch-up --------------------------------------------------------------
    @grpc_errors
    def Tail(self, request: rpb.TailRequest, context: grpc.ServicerContext) -> Iterator[rpb.TailMessage]:
        m = parse_map(request.map_json)
        self._leader()
        eng = self.engine
        first = eng.wal.first_lsn
        if request.after_lsn + 1 < first:
            raise FailedPrecondition(f"shard {self.shard} needs LSN {request.after_lsn + 1} to catch up, but its "
                                     f"oldest WAL record is {first} (a checkpoint cut it): rerun the reshard, "
                                     "which copies again")
        return self._tail(m, request.after_lsn, request.until_lsn, context)

    def _tail(self, m: ShardMap, pos: int, until: int, context: grpc.ServicerContext) -> Iterator[rpb.TailMessage]:
        eng = self.engine
        term = eng.term
        last_msg = 0.0
        disk: Iterator[Any] | None = None  # kept across rounds: each new one reads its files from the start
        while context.is_active():
            if eng.role != Role.LEADER or eng.term != term:
                context.abort(grpc.StatusCode.UNAVAILABLE, f"shard {self.shard}: leadership changed during the tail")
            limit = eng.applied_lsn  # committed and applied: nothing a failover can take back (sync mode)
            if until:
                limit = min(limit, until)
            forwards: list[rpb.Forward] = []
            read = pos
            if limit > pos:
                records: Any = eng.read_after(pos, 4 << 20)
                if records is None:
                    disk = disk or iter(eng.wal.records(pos))
                    records = disk
                else:
                    disk = None
                read, forwards = self._cut(m, records, pos, limit)
                if read == pos and disk is not None:
                    disk = None  # this one ended at the durable LSN of its start: open a newer one
            now = time.monotonic()
            if read > pos or forwards or now - last_msg >= HEARTBEAT_S:
                pos = read
                last_msg = now
                yield rpb.TailMessage(read_lsn=pos, forwards=forwards, term=term, applied_lsn=eng.applied_lsn)
            if until and pos >= until:
                return
            if read == pos and limit <= pos:
                with eng._applied:
                    eng._applied.wait_for(functools.partial(_past, eng, pos), HEARTBEAT_S / 2)

    def _cut(self, m: ShardMap, records: Any, pos: int, limit: int) -> tuple[int, list[rpb.Forward]]:
        """Read records after ``pos`` up to ``limit`` (one message's worth) and
        cut each to its moving parts; returns (LSN read up to, forwards)."""
        forwards: list[rpb.Forward] = []
        read, size = pos, 0
        for rec in records:
            if rec.lsn <= read:
                continue
            if rec.lsn > limit:
                break
            read = rec.lsn
            if rec.rtype == RT_BATCH:
                batch = wal_pb2.WalBatch.FromString(rec.payload)
                for t, bs in moving_parts(self.shard, m, batch).items():
                    for b in bs:
                        data = b.SerializeToString()
                        size += len(data)
                        forwards.append(rpb.Forward(target_shard=t, lsn=rec.lsn, batch=data))
            if size >= CHUNK_BYTES or read - pos >= 4096:
                break
        return read, forwards

    # ---- cutover ---------------------------------------------------------------
    @grpc_errors
    def Freeze(self, request: rpb.FreezeRequest, context: grpc.ServicerContext) -> rpb.FreezeResponse:
        m = parse_map(request.map_json, reshard=False)
        self._leader()
        self.guard.adopt(m)
        eng = self.engine
        held = self.guard.map
        deadline = time.monotonic() + FREEZE_WAIT_S
        while True:
            with eng._append_lock:  # every append either precedes this read or sees the adopted map
                # A prepared cross-shard part is committed without the fence (it was
                # checked when prepared): wait until none holds a moving key.
                waiting = [p.txn_id for p in eng.txns.snapshot()
                           if held.frozen and any(held.moving(k) and held.owner(k) == self.shard for k in p.keys)]
                if not waiting:
                    lsn = eng.wal.last_lsn
                    break
            if time.monotonic() > deadline:
                raise Unavailable(f"shard {self.shard}: prepared transaction(s) {', '.join(waiting[:5])} hold "
                                  f"moving keys after {FREEZE_WAIT_S} s; retry the cutover")
            time.sleep(0.01)
        return rpb.FreezeResponse(lsn=lsn, term=eng.term, map_version=self.guard.version)

    # ---- target side -------------------------------------------------------------
    @grpc_errors
    def Import(self, request: rpb.ImportRequest, context: grpc.ServicerContext) -> rpb.ImportResponse:
        m = parse_map(request.map_json)
        self._leader()
        raw = [request.batch] if request.batch else list(request.batches)
        alts = list(request.alt_request_ids) + [""] * (len(raw) - len(request.alt_request_ids))
        batches = [self._import_part(m, b) for b in raw]
        if len(batches) == 1:
            return rpb.ImportResponse(sequence=self._submit(batches[0], alts[0], None, None))
        # Logged in order, committed together: part i waits until part i-1 is
        # past the fence (it holds the append lock then), so the WAL keeps the
        # source's order, and the fsyncs and replica acknowledgements are shared.
        gates = [threading.Event() for _ in batches]
        with ThreadPoolExecutor(max_workers=min(len(batches), 64)) as pool:
            futs = [pool.submit(self._submit, b, alts[i], gates[i - 1] if i else None, gates[i])
                    for i, b in enumerate(batches)]
            lsns = [f.result() for f in futs]
        return rpb.ImportResponse(sequence=max(lsns))

    def _import_part(self, m: ShardMap, raw: bytes) -> wal_pb2.WalBatch:
        batch = wal_pb2.WalBatch.FromString(raw)
        if batch.drop_concept_ids or batch.txn_id:
            raise InvalidArgument("an import carries concepts, associations and deletes only")
        for cid in [c.concept_id for c in batch.concepts] + [a.source_id for a in batch.associations]:
            if m.next_owner(cid) != self.shard:
                raise InvalidArgument(f"import of {cid!r} to shard {self.shard}: under map version {m.version} it "
                                      f"moves to shard {m.next_owner(cid)}")
        return batch

    def _submit(self, batch: wal_pb2.WalBatch, alt: str, after: threading.Event | None,
                logged: threading.Event | None) -> int:
        if after is not None:
            after.wait()
        if alt and batch.request_id:
            seen = self.engine.request_ids.get(batch.request_id)
            if seen is not None and seen[1] != request_fingerprint(batch.SerializeToString()):
                # Another part of the same client batch holds this id here (it was split
                # over several shards): log this one under an id of its own, the same on
                # every retry. Decided before logging, so the parts keep their order.
                batch.request_id = f"{batch.request_id}@{alt}"
        try:
            with internal_writes(on_admit=logged.set if logged is not None else None):
                try:
                    return self.engine.submit(batch)
                except AlreadyExists:
                    if not alt or not batch.request_id or batch.request_id.endswith(f"@{alt}"):
                        raise
                    batch.request_id = f"{batch.request_id}@{alt}"  # the id was taken meanwhile
                    return self.engine.submit(batch)
        finally:
            if logged is not None:
                logged.set()  # refused or failed: the next part must not wait for ever

    @grpc_errors
    def Purge(self, request: rpb.PurgeRequest, context: grpc.ServicerContext) -> rpb.PurgeResponse:
        m = parse_map(request.map_json, reshard=False)
        self._leader()
        eng = self.engine
        limit = request.limit or PURGE_LIMIT
        with eng._lock:
            state = eng.state
            ids = [cid for cid in state.concepts if m.owner(cid) != self.shard]
            ids += [src for src in state.out if src not in state.concepts and m.owner(src) != self.shard]
        if not ids:
            return rpb.PurgeResponse(dropped=0, remaining=0, sequence=eng.applied_lsn)
        batch = wal_pb2.WalBatch(drop_concept_ids=ids[:limit])
        with internal_writes():
            lsn = eng.submit(batch)
        log.info("reshard purge on shard %d: dropped %d concept(s) it does not own under map version %d "
                 "(%d left)", self.shard, min(limit, len(ids)), m.version, max(0, len(ids) - limit))
        return rpb.PurgeResponse(dropped=min(limit, len(ids)), remaining=max(0, len(ids) - limit), sequence=lsn)


def add_to_server(engine: Engine, guard: ShardGuard, server: grpc.Server) -> None:
    reshard_pb2_grpc.add_ReshardServiceServicer_to_server(ReshardServicer(engine, guard), server)
