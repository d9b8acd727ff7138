"""Cross-shard reads and writes over a set of shard links.

Near 500 lines, knowingly: every operation's fan-out, merge and read-your-writes
token handling follow one pattern and read best side by side; issue 15
(resharding) will split writes from reads when it adds map versions.

Shared by the router process (``sutra_cluster.sharding.router``) and the Python client
(``sutra_cluster.sharding.client``): both take and give the service's protobuf
messages, so the router is a thin gRPC skin over this.

Where data lives, and so how each operation is answered:

- a concept lives on ``owner(concept_id)``;
- an association lives ONLY on the shard of its source concept (both its
  ``out`` entry at the source and its ``inc`` entry at the target are in that
  shard's state). A cross-shard association is one write to one shard, so it
  is never half-applied, whatever crashes;
- outgoing neighbours of X come from X's shard; incoming neighbours of X from
  every shard (each holds the edges whose source it owns);
- FindPath is a breadth-first search run here, one batched neighbour call per
  shard per BFS level, visiting neighbours in id order as a single node does,
  so the path found is the one a single node would find;
- VectorSearch asks every shard for its top k and merges by (similarity desc,
  id asc), the single node's order;
- deleting X deletes it on its shard (with its outgoing edges), then removes on
  every other shard the edges that point at X (``purge_foreign``). The delete
  is acknowledged only when all of that is done; each step is idempotent
  (request ids), so a delete that failed part-way is completed by retrying it;
- a LearnBatch is validated whole, as a single node would, then split: each
  shard's part is applied atomically (all or nothing on that shard) under the
  batch's request id, so a retry after a failure completes the parts that were
  missing and applies none twice. Deletes' purges run after every part;
- with a transaction coordinator (``txn``: the router, with etcd), a batch
  whose parts fall on two or more shards, a batch that deletes, and a delete
  on several shards are one transaction instead: every part on every shard or
  none, finished after a router crash by the shards themselves
  (``sutra_cluster.txn``). A one-shard batch keeps the plain path.

Reads wait for read-your-writes tokens: ``shard_sequences`` (an LSN per
shard). The plain ``sequence`` is an LSN of one shard, so it is accepted only
for reads that ask exactly one shard.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

from sutra_cluster.api import reads
from sutra_cluster.api import validate as model
from sutra_cluster.errors import InvalidArgument, ResourceExhausted
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.sharding.links import Channels, ShardLink, ShardUnavailable, retryable
from sutra_cluster.sharding.reshard_follow import keep_owned, search_owned
from sutra_cluster.sharding.shardmap import ShardMap
from sutra_cluster.storage.state import walk_back

log = logging.getLogger(__name__)
R = TypeVar("R")

BFS_BATCH = 4096  # ids per GetNeighborsBatch call (below SUTRA_MAX_BATCH's default)
READ_HINT = " (set allow_partial for results from the other shards)"
WRITE_HINT = (" (the write is not acknowledged; retry it with the same request_id: the parts already "
              "applied are not applied twice)")


class ShardsUnavailable(ShardUnavailable):
    """One or more shards of a fan-out read could not be reached (and partial results were not asked for)."""

    def __init__(self, failures: Sequence[ShardUnavailable], hint: str = "") -> None:
        self.shards = sorted(f.shard for f in failures)
        detail = "; ".join(f"shard {f.shard}: {f.detail}" for f in sorted(failures, key=lambda f: f.shard))
        super().__init__(self.shards[0], detail)
        names = ", ".join(map(str, self.shards))
        self.args = (f"shard{'s' if len(self.shards) > 1 else ''} {names} unavailable: {detail}{hint}",)

    def __str__(self) -> str:
        return str(self.args[0])


def _token(req: Any) -> dict[int, int]:
    tok: dict[int, int] = {}
    for e in req.shard_sequences:
        tok[e.shard] = max(tok.get(e.shard, 0), e.sequence)
    return tok


def _seqs(shard_seqs: Mapping[int, int]) -> list[pb.ShardSequence]:
    return [pb.ShardSequence(shard=s, sequence=q) for s, q in sorted(shard_seqs.items())]


class ShardSet:
    """A shard map's shards, their links, and the operations across them."""

    def __init__(self, smap: ShardMap, *, etcd_endpoints: Sequence[str] = (), cluster: str = "sutra",
                 timeout: float = 10.0, write_deadline: float = 15.0, read_deadline: float = 15.0,
                 credentials: grpc.ChannelCredentials | None = None, dimension: int = 0,
                 max_batch: int = 10_000, max_message_bytes: int = 64 << 20, workers: int = 32,
                 max_path_visits: int = 100_000, max_path_ms: int = 2_000, txn: Any = None) -> None:
        self.map = smap
        # The router's TxnCoordinator (txn/coordinator.py): cross-shard writes commit
        # on every shard or none. None (clients, static maps): atomic per shard only.
        self.txn = txn
        self.channels = Channels(credentials)
        self.links = [
            ShardLink(s, self.channels, etcd_endpoints=etcd_endpoints, cluster=cluster,
                      members=smap.members_of(s), timeout=timeout, write_deadline=write_deadline,
                      read_deadline=read_deadline)
            for s in range(smap.shards)
        ]
        self.pool = ThreadPoolExecutor(max_workers=max(workers, 2 * smap.shards), thread_name_prefix="fanout")
        self.dimension = dimension
        self.max_batch = max_batch
        self.max_message_bytes = max_message_bytes
        # The router bounds a FindPath's BFS as a node does (SUTRA_MAX_PATH_VISITS/_MS).
        self.max_path_visits = max_path_visits
        self.max_path_ms = max_path_ms

    @property
    def shards(self) -> int:
        return self.map.shards

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        for link in self.links:
            link.close()
        self.channels.close()

    def owner(self, concept_id: str) -> int:
        return self.map.owner(concept_id)

    # ---- plumbing --------------------------------------------------------
    def _write(self, shard: int, method: str, request: Any) -> Any:
        return self.links[shard].call(method, request, write=True)

    def _read(self, shard: int, method: str, request: Any, pref: int) -> Any:
        return self.links[shard].call(method, request, write=False, replica=pref == pb.READ_REPLICA)

    def _parallel(self, shards: Iterable[int], fn: Callable[[int], R], allow_partial: bool = False,
                  hint: str = "") -> tuple[dict[int, R], list[int]]:
        """Run ``fn(shard)`` for every shard at once. A shard that cannot be
        reached is named in the returned list when ``allow_partial``, otherwise
        it raises ShardsUnavailable naming every such shard. Any other error
        (for example INVALID_ARGUMENT) is raised as the shard answered it."""
        order = list(shards)
        futs: dict[int, Future[R]] = {s: self.pool.submit(fn, s) for s in order[1:]}
        results: dict[int, R] = {}
        down: list[ShardUnavailable] = []
        other: BaseException | None = None

        def collect(s: int, get: Callable[[], R]) -> None:
            nonlocal other
            try:
                results[s] = get()
            except ShardUnavailable as exc:
                down.append(exc)
            except grpc.RpcError as exc:
                if retryable(exc, write=False):  # e.g. a read's own deadline: the shard did not answer
                    down.append(ShardUnavailable(s, f"{exc.code().name}: {exc.details()}"))  # type: ignore[attr-defined]
                elif other is None:
                    other = exc
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after every call finished
                if other is None:
                    other = exc

        if order:
            collect(order[0], lambda: fn(order[0]))
        for s, f in futs.items():
            collect(s, f.result)
        if other is not None:
            raise other
        if down and not allow_partial:
            raise ShardsUnavailable(down, hint)
        return results, sorted(d.shard for d in down)

    def _one_shard_seq(self, req: Any, shard: int) -> int:
        """The LSN a read sent to ``shard`` alone waits for."""
        tok = _token(req)
        return tok.get(shard, 0) or req.sequence

    def _fanout_seqs(self, req: Any) -> dict[int, int]:
        if req.sequence and not req.shard_sequences and self.shards > 1:
            raise InvalidArgument(
                "sequence is an LSN of one shard, and this read asks every shard; pass shard_sequences "
                "(from the writes' responses) instead"
            )
        tok = _token(req)
        if self.shards == 1 and req.sequence:
            tok[0] = max(tok.get(0, 0), req.sequence)
        return tok

    @staticmethod
    def _request_id(rid: str) -> str:
        # Every write gets a request id, so that retrying it (here across a
        # failover, or by the caller after an error) applies it once. Half a
        # node's limit: purges send "<id>:purge:<concept id>".
        model.check_request_id(rid, limit=model.MAX_REQUEST_ID_BYTES // 2)
        return rid or uuid.uuid4().hex

    # ---- writes ----------------------------------------------------------
    def learn_concept(self, req: pb.LearnConceptRequest) -> pb.LearnConceptResponse:
        model.check_id("concept_id", req.concept_id)
        s = self.owner(req.concept_id)
        req.request_id = self._request_id(req.request_id)
        seq = self._write(s, "LearnConcept", req).sequence
        return pb.LearnConceptResponse(sequence=seq, shard_sequences=_seqs({s: seq}))

    def learn_association(self, req: pb.LearnAssociationRequest) -> pb.LearnAssociationResponse:
        model.check_id("source_id", req.source_id)
        s = self.owner(req.source_id)
        req.request_id = self._request_id(req.request_id)
        seq = self._write(s, "LearnAssociation", req).sequence
        return pb.LearnAssociationResponse(sequence=seq, shard_sequences=_seqs({s: seq}))

    def _purge(self, concept_id: str, rid: str, skip: int) -> dict[int, int]:
        """Remove, on every shard but ``skip``, the edges that point at ``concept_id``."""
        others = [s for s in range(self.shards) if s != skip]

        def purge(s: int) -> int:
            r = pb.DeleteConceptRequest(concept_id=concept_id, request_id=f"{rid}:purge:{concept_id}",
                                        purge_foreign=True)
            return int(self._write(s, "DeleteConcept", r).sequence)

        done, _ = self._parallel(others, purge, hint=WRITE_HINT)
        return done

    def delete_concept(self, req: pb.DeleteConceptRequest) -> pb.DeleteConceptResponse:
        model.check_id("concept_id", req.concept_id)
        if req.purge_foreign:
            raise InvalidArgument("purge_foreign is for the shards' own use; a router deletes everywhere by itself")
        s = self.owner(req.concept_id)
        client_id = bool(req.request_id)
        req.request_id = self._request_id(req.request_id)
        if self.txn is not None and self.shards > 1:
            seqs = self.txn.delete_concept(self, req, client_id)
            return pb.DeleteConceptResponse(sequence=seqs[s], shard_sequences=_seqs(seqs))
        seq = self._write(s, "DeleteConcept", req).sequence
        seqs = self._purge(req.concept_id, req.request_id, s)
        seqs[s] = seq
        return pb.DeleteConceptResponse(sequence=seq, shard_sequences=_seqs(seqs))

    def _dimension(self) -> int:
        """VECTOR_DIMENSION, as given or as the first shard that answers reports it."""
        down = []
        for s in range(self.shards):
            if self.dimension:
                break
            try:
                st = self.links[s].call("GetStats", pb.GetStatsRequest(), write=False, replica=True,
                                        deadline_s=self._probe_deadline())
                self.dimension = int(st.vector_dimension)
            except ShardUnavailable as exc:
                down.append(exc)
        if not self.dimension and len(down) == self.shards:
            raise ShardsUnavailable(down)
        return self.dimension

    def split_batch(self, req: pb.LearnBatchRequest) -> dict[int, pb.LearnBatchRequest]:
        parts: dict[int, pb.LearnBatchRequest] = {}

        def part(s: int) -> pb.LearnBatchRequest:
            if s not in parts:
                parts[s] = pb.LearnBatchRequest(request_id=req.request_id)
            return parts[s]

        for c in req.concepts:
            part(self.owner(c.concept_id)).concepts.append(c)
        for a in req.associations:
            part(self.owner(a.source_id)).associations.append(a)
        for d in req.delete_concept_ids:
            part(self.owner(d)).delete_concept_ids.append(d)
        return parts

    def learn_batch(self, req: pb.LearnBatchRequest) -> pb.LearnBatchResponse:
        # Validate the whole batch first, as one node would: a batch one shard
        # would refuse must reach no shard at all.
        dim = self._dimension()
        if dim:  # 0: a node too old to report it; the shards still check their own parts
            model.check_batch(req, model.Limits(dim, self.max_batch, self.max_message_bytes))
        client_id = bool(req.request_id)
        req.request_id = self._request_id(req.request_id)
        parts = self.split_batch(req)
        if self.txn is not None and self.txn.spans(self, req, parts):
            seqs = self.txn.learn_batch(self, req, parts, client_id)
            return pb.LearnBatchResponse(
                sequence=0, concepts=len(req.concepts), associations=len(req.associations),
                deletes=len(req.delete_concept_ids), shard_sequences=_seqs(seqs))
        done, _ = self._parallel(sorted(parts), lambda s: int(self._write(s, "LearnBatch", parts[s]).sequence),
                                 hint=WRITE_HINT)
        seqs = dict(done)
        for d in dict.fromkeys(req.delete_concept_ids):
            for s, q in self._purge(d, req.request_id, self.owner(d)).items():
                seqs[s] = max(seqs.get(s, 0), q)
        return pb.LearnBatchResponse(
            sequence=next(iter(seqs.values())) if len(seqs) == 1 else 0, concepts=len(req.concepts),
            associations=len(req.associations), deletes=len(req.delete_concept_ids), shard_sequences=_seqs(seqs),
        )

    # ---- reads -----------------------------------------------------------
    def query_concept(self, req: pb.QueryConceptRequest) -> pb.QueryConceptResponse:
        model.check_id("concept_id", req.concept_id)
        s = self.owner(req.concept_id)
        r = pb.QueryConceptRequest(concept_id=req.concept_id, include_embedding=req.include_embedding,
                                   sequence=self._one_shard_seq(req, s))
        return self._read(s, "QueryConcept", r, req.read_preference)

    def get_neighbors(self, req: pb.GetNeighborsRequest) -> pb.GetNeighborsResponse:
        model.check_id("concept_id", req.concept_id)
        model.check_direction(req.direction)
        home = self.owner(req.concept_id)
        if req.direction == pb.OUTGOING or self.shards == 1:
            r = pb.GetNeighborsRequest(concept_id=req.concept_id, direction=req.direction,
                                       sequence=self._one_shard_seq(req, home))
            return self._read(home, "GetNeighbors", r, req.read_preference)
        tok = self._fanout_seqs(req)

        def ask(s: int) -> pb.GetNeighborsResponse:
            # Edges live with their source: the home shard has X's outgoing
            # edges (and incoming ones from its own concepts); every other shard
            # only edges from its concepts to X.
            d = req.direction if s == home else pb.INCOMING
            r = pb.GetNeighborsRequest(concept_id=req.concept_id, direction=d, sequence=tok.get(s, 0))
            return keep_owned(self.map, s, req.concept_id, self._read(s, "GetNeighbors", r, req.read_preference))

        got, missing = self._parallel(range(self.shards), ask, req.allow_partial, READ_HINT)
        found = [(n.concept_id, n.assoc_type, n.confidence, n.outgoing) for r in got.values() for n in r.neighbors]
        found.sort(key=lambda x: (x[0], x[1], not x[3]))  # GraphState.neighbors' order
        return pb.GetNeighborsResponse(
            neighbor_ids=sorted({f[0] for f in found}),
            neighbors=[pb.Neighbor(concept_id=o, assoc_type=t, confidence=c, outgoing=og) for o, t, c, og in found],
            missing_shards=missing,
        )

    def neighbors_batch(self, ids: Sequence[str], direction: int, tok: Mapping[int, int], pref: int,
                        allow_partial: bool, ids_only: bool = True) -> tuple[list[pb.GetNeighborsResponse], list[int]]:
        """Neighbours of many ids at once: one call per shard (per BFS_BATCH ids).

        OUTGOING asks each id's own shard; INCOMING and BOTH ask every shard
        for every id (a shard holds outgoing edges only of the concepts it owns,
        so BOTH on another shard adds just the incoming ones)."""
        out = [pb.GetNeighborsResponse() for _ in ids]
        if direction == pb.OUTGOING:
            plan: dict[int, list[int]] = {}
            for i, cid in enumerate(ids):
                plan.setdefault(self.owner(cid), []).append(i)
        else:
            plan = {s: list(range(len(ids))) for s in range(self.shards)}

        def ask(s: int) -> list[tuple[int, pb.GetNeighborsResponse]]:
            idx = plan[s]
            got: list[tuple[int, pb.GetNeighborsResponse]] = []
            for lo in range(0, len(idx), BFS_BATCH):
                chunk = idx[lo:lo + BFS_BATCH]
                # While the map is mixed (a reshard), edges come with their direction to be kept by owner.
                r = pb.GetNeighborsBatchRequest(concept_ids=[ids[i] for i in chunk], direction=direction,  # type: ignore[arg-type]
                                                sequence=tok.get(s, 0), ids_only=ids_only and not self.map.mixed)
                resp = self._read(s, "GetNeighborsBatch", r, pref)
                got.extend((i, keep_owned(self.map, s, ids[i], x)) for i, x in zip(chunk, resp.results))
            return got

        got, missing = self._parallel(sorted(plan), ask, allow_partial, READ_HINT)
        per_id: list[list[pb.GetNeighborsResponse]] = [[] for _ in ids]
        for s in sorted(got):
            for i, r in got[s]:
                per_id[i].append(r)
        for i, rs in enumerate(per_id):
            if len(rs) == 1:
                out[i] = rs[0]
                continue
            out[i].neighbor_ids.extend(sorted({n for r in rs for n in r.neighbor_ids}))
            if not ids_only:
                found = [(n.concept_id, n.assoc_type, n.confidence, n.outgoing) for r in rs for n in r.neighbors]
                found.sort(key=lambda x: (x[0], x[1], not x[3]))
                out[i].neighbors.extend(pb.Neighbor(concept_id=o, assoc_type=t, confidence=c, outgoing=og)
                                        for o, t, c, og in found)
        return out, missing

    def get_neighbors_batch(self, req: pb.GetNeighborsBatchRequest) -> pb.GetNeighborsBatchResponse:
        # The same id limit as a node: the router used to fan out any number of ids.
        if len(req.concept_ids) > self.max_batch:
            raise InvalidArgument(f"concept_ids has {len(req.concept_ids)} ids, SUTRA_MAX_BATCH is {self.max_batch}")
        for i, cid in enumerate(req.concept_ids):
            model.check_id(f"concept_ids[{i}]", cid)
        model.check_direction(req.direction)
        if req.direction == pb.OUTGOING and len({self.owner(c) for c in req.concept_ids}) <= 1:
            tok = {s: self._one_shard_seq(req, s) for s in range(self.shards)}
        else:
            tok = self._fanout_seqs(req)
        results, missing = self.neighbors_batch(list(req.concept_ids), req.direction, tok, req.read_preference,
                                                req.allow_partial, req.ids_only)
        return pb.GetNeighborsBatchResponse(results=results, missing_shards=missing)

    def find_path(self, req: pb.FindPathRequest) -> pb.FindPathResponse:
        model.check_id("start_id", req.start_id)
        model.check_id("end_id", req.end_id)
        depth = model.path_depth(req.max_depth)
        tok = self._fanout_seqs(req)
        start, end = req.start_id, req.end_id
        missing: set[int] = set()

        def level(ids: list[str]) -> list[pb.GetNeighborsResponse]:
            rs, miss = self.neighbors_batch(ids, pb.BOTH, tok, req.read_preference, req.allow_partial)
            missing.update(miss)
            return rs

        if start == end:
            # A single node answers [start] when start is a concept or has any edge.
            s = self.owner(start)
            q = pb.QueryConceptRequest(concept_id=start, sequence=tok.get(s, 0))
            try:
                exists = self._read(s, "QueryConcept", q, req.read_preference).found
            except ShardUnavailable:
                if not req.allow_partial:
                    raise
                missing.add(s)
                exists = False
            exists = exists or bool(level([start])[0].neighbor_ids)
            return pb.FindPathResponse(found=exists, path=[start] if exists else [], missing_shards=sorted(missing))
        # GraphState.find_path, one BFS level at a time: the same visiting order
        # (FIFO by level, neighbours in id order), so the same first path.
        parent: dict[str, str] = {start: start}
        frontier = [start]
        dist = 0
        deadline = time.monotonic() + self.max_path_ms / 1000.0
        while frontier and dist < depth:
            self._path_bound(len(parent), dist, end, deadline)
            nbrs = level(frontier)
            nxt: list[str] = []
            for node, r in zip(frontier, nbrs):
                for other in r.neighbor_ids:  # sorted, each once
                    if other in parent:
                        continue
                    parent[other] = node
                    if other == end:
                        return pb.FindPathResponse(found=True, path=walk_back(parent, start, end),
                                                   missing_shards=sorted(missing))
                    nxt.append(other)
            frontier = nxt
            dist += 1
        if frontier and dist < depth:
            self._path_bound(len(parent), dist, end, deadline)
        return pb.FindPathResponse(found=False, missing_shards=sorted(missing))

    def _path_bound(self, visited: int, dist: int, end: str, deadline: float) -> None:
        if visited > self.max_path_visits:
            raise ResourceExhausted(f"FindPath visited {visited} concepts (depth {dist}) without reaching {end!r}; "
                                    f"SUTRA_MAX_PATH_VISITS is {self.max_path_visits}: lower max_depth")
        if time.monotonic() > deadline:
            raise ResourceExhausted(f"FindPath searched for {self.max_path_ms} ms ({visited} concepts visited, "
                                    f"depth {dist}) without reaching {end!r}; SUTRA_MAX_PATH_MS is "
                                    f"{self.max_path_ms}: lower max_depth")

    def vector_search(self, req: pb.VectorSearchRequest) -> pb.VectorSearchResponse:
        model.check_k(req.k)
        model.check_ef_search(req.ef_search)
        reads.check_filter(req.filter)  # refused here, before any shard is asked
        reads.check_score_threshold(req)
        tok = self._fanout_seqs(req)

        def ask(s: int) -> pb.VectorSearchResponse:
            # Each shard filters (and thresholds) inside its own search, so its
            # top k are the top k of its matches; the merge below keeps k.
            r = pb.VectorSearchRequest(query_vector=req.query_vector, query_f32=req.query_f32, k=req.k,
                                       ef_search=req.ef_search, sequence=tok.get(s, 0), filter=req.filter,
                                       with_fields=req.with_fields)
            if req.HasField("score_threshold"):
                r.score_threshold = req.score_threshold

            def search(k: int) -> pb.VectorSearchResponse:
                r.k = k
                return self._read(s, "VectorSearch", r, req.read_preference)

            return search_owned(self.map, s, req.k, search)  # a plain search unless the map is mixed

        got, missing = self._parallel(range(self.shards), ask, req.allow_partial, READ_HINT)
        hits = [x for r in got.values() for x in r.results]
        hits.sort(key=lambda h: (-h.similarity, h.concept_id))  # the single node's order
        return pb.VectorSearchResponse(
            results=hits[: req.k],
            exact=all(r.exact for r in got.values()), missing_shards=missing,
        )

    # ---- operations ------------------------------------------------------
    def flush(self) -> pb.FlushResponse:
        got, _ = self._parallel(range(self.shards), lambda s: self._write(s, "Flush", pb.FlushRequest()))
        return pb.FlushResponse(success=all(r.success for r in got.values()),
                                wal_bytes=sum(r.wal_bytes for r in got.values()))

    def _probe_deadline(self) -> float:
        return min(2.0, self.links[0].read_deadline) if self.links else 2.0

    def health(self, deadline_s: float | None = None) -> tuple[bool, str, list[pb.HealthCheckResponse]]:
        def ask(s: int) -> pb.HealthCheckResponse:
            try:
                r = self.links[s].call("HealthCheck", pb.HealthCheckRequest(), write=False,
                                       deadline_s=self._probe_deadline() if deadline_s is None else deadline_s)
            except (ShardUnavailable, grpc.RpcError) as exc:
                why = str(exc) if isinstance(exc, ShardUnavailable) else f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
                return pb.HealthCheckResponse(shard=s, healthy=False, status=f"unavailable: {why}")
            r.shard = s
            return r

        got, _ = self._parallel(range(self.shards), ask)
        shards = [got[s] for s in range(self.shards)]
        bad = [r.shard for r in shards if not r.healthy]
        if not bad:
            return True, f"serving: {self.shards} shard(s), each with a healthy leader", shards
        return False, f"degraded: shard(s) {', '.join(map(str, bad))} without a healthy leader", shards

    def stats(self, deadline_s: float | None = None) -> tuple[list[pb.GetStatsResponse], list[int]]:
        budget = self._probe_deadline() if deadline_s is None else deadline_s

        def ask(s: int) -> pb.GetStatsResponse:
            r = self.links[s].call("GetStats", pb.GetStatsRequest(), write=False, deadline_s=budget)
            r.shard = s
            return r  # type: ignore[no-any-return]

        got, missing = self._parallel(range(self.shards), ask, allow_partial=True)
        return [got[s] for s in sorted(got)], missing

    def digest(self, tok: Mapping[int, int], version: int = 0) -> pb.GetDigestResponse:
        """A digest of the per-shard digests (not comparable with one node's digest),
        of digest ``version`` (0: the shards' own). When shard leaders of two builds
        answer two versions (a rolling upgrade), every shard is asked for the older."""
        def ask(v: int) -> dict[int, pb.GetDigestResponse]:
            got, _ = self._parallel(range(self.shards), lambda s: self._read(
                s, "GetDigest", pb.GetDigestRequest(sequence=tok.get(s, 0), digest_version=v), pb.READ_LEADER))
            return got

        got = ask(version)
        versions = {r.digest_version or 1 for r in got.values()}
        if len(versions) > 1:
            got = ask(min(versions))
            versions = {r.digest_version or 1 for r in got.values()}
        h = hashlib.sha256()
        for s in sorted(got):
            h.update(f"{s}:{got[s].digest}\n".encode())
        return pb.GetDigestResponse(digest=h.hexdigest(), concepts=sum(r.concepts for r in got.values()),
                                    edges=sum(r.edges for r in got.values()), digest_version=max(versions, default=0))
