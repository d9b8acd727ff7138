"""The routing Python client: talks to each shard directly, no router needed.

- Each write goes to the leader of the shard that owns it (a concept's id, an
  association's source), found in etcd and followed across failovers by a
  watch on each shard's leader key; a write is retried with its request id, so
  it is applied once.
- Each read goes to the shard's leader, or to one of its replicas
  (``read_preference="replica"``), per client or per call.
- Read-your-writes: the client keeps a token, the highest LSN it has seen
  acknowledged per shard, and every read waits on each shard it asks until
  that shard's LSN is visible there. ``token()`` returns it, so that another
  client (or process) can pass it as ``token=`` and read those writes too.

Errors: a shard's own answer is raised as ``grpc.RpcError`` (for example
INVALID_ARGUMENT); a shard that cannot be reached before the deadline raises
``ShardUnavailable`` (``.shard``), a fan-out read ``ShardsUnavailable``
(``.shards``) unless ``allow_partial=True``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Self

import grpc
import numpy as np

from sutra_cluster.client import Association, Concept, SutraClient
from sutra_cluster.errors import ConfigError
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.sharding import shardmap
from sutra_cluster.sharding.core import ShardSet
from sutra_cluster.sharding.shardmap import ShardMap

_PREFS = {"leader": pb.READ_LEADER, "replica": pb.READ_REPLICA}


def _f32(vec: np.ndarray) -> bytes:
    return np.ascontiguousarray(vec, dtype="<f4").tobytes()


class ShardedClient:
    """A client for a sharded cluster. Thread-safe."""

    def __init__(self, etcd_endpoints: Sequence[str] = (), *, cluster: str = "sutra",
                 shard_map: ShardMap | str | None = None, read_preference: str = "leader",
                 timeout: float = 10.0, failover_deadline: float = 15.0, read_deadline: float | None = None,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        if isinstance(shard_map, str):
            shard_map = ShardMap.parse(shard_map)
        if shard_map is None:
            if not etcd_endpoints:
                raise ConfigError("ShardedClient needs etcd endpoints or a shard map")
            shard_map = shardmap.load_from_etcd(etcd_endpoints, cluster)
            if shard_map is None:
                raise ConfigError(f"no shard map in etcd at {shardmap.map_key(cluster)}")
        self.read_preference = self._pref(read_preference)
        self.set = ShardSet(shard_map, etcd_endpoints=etcd_endpoints, cluster=cluster, timeout=timeout,
                            write_deadline=failover_deadline,
                            read_deadline=failover_deadline if read_deadline is None else read_deadline,
                            credentials=credentials)
        self._token: dict[int, int] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _pref(name: str | None) -> int:
        if name not in _PREFS:
            raise ValueError(f"read_preference is {name!r}, it must be one of {', '.join(_PREFS)}")
        return _PREFS[name]

    @property
    def shard_map(self) -> ShardMap:
        return self.set.map

    def owner(self, concept_id: str) -> int:
        return self.set.owner(concept_id)

    def close(self) -> None:
        self.set.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- tokens ----------------------------------------------------------
    def token(self) -> dict[int, int]:
        """Read-your-writes token: shard -> highest LSN this client saw acknowledged."""
        with self._lock:
            return dict(self._token)

    def _seen(self, seqs: Iterable[pb.ShardSequence]) -> None:
        with self._lock:
            for e in seqs:
                if e.sequence > self._token.get(e.shard, 0):
                    self._token[e.shard] = e.sequence

    def _read_fields(self, req: Any, token: Mapping[int, int] | None, read_preference: str | None,
                     allow_partial: bool | None = None) -> Any:
        tok = self.token()
        for s, q in (token or {}).items():
            tok[s] = max(tok.get(s, 0), q)
        req.shard_sequences.extend(pb.ShardSequence(shard=s, sequence=q) for s, q in sorted(tok.items()))
        req.read_preference = self.read_preference if read_preference is None else self._pref(read_preference)
        if allow_partial is not None:
            req.allow_partial = allow_partial
        return req

    # ---- writes ----------------------------------------------------------
    def learn_concept(self, concept_id: str, content: str, embedding: np.ndarray | None = None, *,
                      strength: float = 1.0, confidence: float = 1.0,
                      attributes: Mapping[str, str] | None = None, request_id: str = "") -> int:
        """Returns the LSN on the concept's shard."""
        req = Concept(concept_id, content, embedding, strength, confidence, attributes or {}).to_pb()
        req.request_id = request_id
        r = self.set.learn_concept(req)
        self._seen(r.shard_sequences)
        return int(r.sequence)

    def learn_association(self, source_id: str, target_id: str, assoc_type: int = 0, confidence: float = 1.0,
                          request_id: str = "") -> int:
        """Stored on the source's shard only: one write, never half-applied. Returns its LSN there."""
        req = Association(source_id, target_id, assoc_type, confidence).to_pb()
        req.request_id = request_id
        r = self.set.learn_association(req)
        self._seen(r.shard_sequences)
        return int(r.sequence)

    def delete_concept(self, concept_id: str, request_id: str = "") -> dict[int, int]:
        """Deletes the concept and every edge touching it, on every shard.
        Returns shard -> LSN. Retry with the same request id after an error."""
        r = self.set.delete_concept(pb.DeleteConceptRequest(concept_id=concept_id, request_id=request_id))
        self._seen(r.shard_sequences)
        return {e.shard: e.sequence for e in r.shard_sequences}

    def learn_batch(self, concepts: Sequence[Concept] = (), associations: Sequence[Association] = (),
                    deletes: Sequence[str] = (), request_id: str = "") -> dict[int, int]:
        """Atomic on each shard it touches; returns shard -> LSN. After an
        error, retry with the same request id: the parts that were applied are
        not applied twice, the missing ones are."""
        req = SutraClient.batch_request(concepts, associations, deletes)
        if request_id:
            req.request_id = request_id
        r = self.set.learn_batch(req)
        self._seen(r.shard_sequences)
        return {e.shard: e.sequence for e in r.shard_sequences}

    # ---- reads -----------------------------------------------------------
    def query_concept(self, concept_id: str, *, include_embedding: bool = False,
                      token: Mapping[int, int] | None = None,
                      read_preference: str | None = None) -> pb.QueryConceptResponse | None:
        req = self._read_fields(pb.QueryConceptRequest(concept_id=concept_id, include_embedding=include_embedding),
                                token, read_preference)
        r = self.set.query_concept(req)
        return r if r.found else None

    def neighbors(self, concept_id: str, direction: int = pb.BOTH, *, token: Mapping[int, int] | None = None,
                  read_preference: str | None = None, allow_partial: bool = False) -> pb.GetNeighborsResponse:
        req = self._read_fields(pb.GetNeighborsRequest(concept_id=concept_id, direction=direction),  # type: ignore[arg-type]
                                token, read_preference, allow_partial)
        return self.set.get_neighbors(req)

    def get_neighbors(self, concept_id: str, direction: int = pb.BOTH, **kw: Any) -> list[str]:
        return list(self.neighbors(concept_id, direction, **kw).neighbor_ids)

    def find_path(self, start_id: str, end_id: str, max_depth: int = 0, *, token: Mapping[int, int] | None = None,
                  read_preference: str | None = None, allow_partial: bool = False) -> list[str] | None:
        req = self._read_fields(pb.FindPathRequest(start_id=start_id, end_id=end_id, max_depth=max_depth),
                                token, read_preference, allow_partial)
        r = self.set.find_path(req)
        return list(r.path) if r.found else None

    def vector_search(self, query: np.ndarray, k: int = 10, ef_search: int = 0, *,
                      token: Mapping[int, int] | None = None, read_preference: str | None = None,
                      allow_partial: bool = False) -> list[tuple[str, float]]:
        req = self._read_fields(pb.VectorSearchRequest(query_f32=_f32(query), k=k, ef_search=ef_search),
                                token, read_preference, allow_partial)
        return [(x.concept_id, x.similarity) for x in self.set.vector_search(req).results]

    # ---- operations ------------------------------------------------------
    def stats(self) -> list[pb.GetStatsResponse]:
        """Each reachable shard leader's stats (``shard`` set)."""
        return self.set.stats()[0]

    def health(self) -> tuple[bool, str]:
        ok, status, _ = self.set.health()
        return ok, status

    def flush(self) -> pb.FlushResponse:
        return self.set.flush()
