"""Multi-get, scroll and count across shards (the router's and the routing
client's side of GetConcepts, ScrollConcepts and CountConcepts).

- GetConcepts asks each id's own shard, all shards at once, and answers in
  the request's order. With ``allow_partial`` the ids of a shard that is down
  come back ``found=false`` and the shard is named in ``missing_shards``.
- ScrollConcepts asks every shard for its first ``limit`` matching ids after
  the cursor and merges them: the global first ``limit`` ids are among those.
  A shard whose page ended early (its byte bound) caps the merged page at its
  last id, so no id of that shard is skipped.
- CountConcepts sums the shards' counts.

Each shard waits for its own entry of the read-your-writes token, and reads
go to a leader or a replica by ``read_preference``, as the other reads do
(see ``sutra_cluster.sharding.core``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sutra_cluster.api import reads
from sutra_cluster.pb import storage_pb2 as pb

if TYPE_CHECKING:
    from sutra_cluster.sharding.core import ShardSet

READ_HINT = " (set allow_partial for results from the other shards)"


def get_concepts(ss: ShardSet, req: pb.GetConceptsRequest) -> pb.GetConceptsResponse:
    reads.check_ids(req.concept_ids, ss.max_batch)
    plan: dict[int, list[int]] = {}
    for i, cid in enumerate(req.concept_ids):
        plan.setdefault(ss.owner(cid), []).append(i)
    one = len(plan) <= 1
    tok = {s: ss._one_shard_seq(req, s) for s in plan} if one else ss._fanout_seqs(req)

    def ask(s: int) -> pb.GetConceptsResponse:
        r = pb.GetConceptsRequest(concept_ids=[req.concept_ids[i] for i in plan[s]], sequence=tok.get(s, 0),
                                  include_embedding=req.include_embedding)
        return ss._read(s, "GetConcepts", r, req.read_preference)  # type: ignore[no-any-return]

    got, missing = ss._parallel(sorted(plan), ask, req.allow_partial, READ_HINT)
    out = [pb.QueryConceptResponse(concept_id=cid) for cid in req.concept_ids]
    for s, resp in got.items():
        for i, c in zip(plan[s], resp.concepts):
            out[i] = c
    return pb.GetConceptsResponse(concepts=out, missing_shards=missing)


def scroll_concepts(ss: ShardSet, req: pb.ScrollConceptsRequest) -> pb.ScrollConceptsResponse:
    reads.check_after_id(req.after_id)
    limit = reads.scroll_limit(req.limit)
    reads.check_filter(req.filter)
    tok = ss._fanout_seqs(req)

    def ask(s: int) -> pb.ScrollConceptsResponse:
        r = pb.ScrollConceptsRequest(after_id=req.after_id, limit=limit, filter=req.filter,
                                     include_embedding=req.include_embedding, sequence=tok.get(s, 0))
        return ss._read(s, "ScrollConcepts", r, req.read_preference)  # type: ignore[no-any-return]

    got, missing = ss._parallel(range(ss.shards), ask, req.allow_partial, READ_HINT)
    merged = sorted((c for r in got.values() for c in r.concepts), key=lambda c: c.concept_id)
    # A shard with more to give caps the page at the last id it gave: past it,
    # ids of that shard would be missing from the merged order.
    caps = [r.concepts[-1].concept_id for r in got.values() if r.next_after_id and r.concepts]
    cap = min(caps) if caps else None
    page = [c for c in merged if cap is None or c.concept_id <= cap][:limit]
    more = cap is not None or len(merged) > len(page)
    return pb.ScrollConceptsResponse(concepts=page, next_after_id=page[-1].concept_id if more and page else "",
                                     missing_shards=missing)


def count_concepts(ss: ShardSet, req: pb.CountConceptsRequest) -> pb.CountConceptsResponse:
    reads.check_filter(req.filter)
    tok = ss._fanout_seqs(req)

    def ask(s: int) -> pb.CountConceptsResponse:
        r = pb.CountConceptsRequest(filter=req.filter, sequence=tok.get(s, 0))
        return ss._read(s, "CountConcepts", r, req.read_preference)  # type: ignore[no-any-return]

    got, missing = ss._parallel(range(ss.shards), ask, req.allow_partial, READ_HINT)
    return pb.CountConceptsResponse(count=sum(r.count for r in got.values()), missing_shards=missing)
