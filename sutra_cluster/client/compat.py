"""The earlier client names, kept as thin constructors over ``SutraClient``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from sutra_cluster.client.calls import Call
from sutra_cluster.client.sync import SutraClient
from sutra_cluster.client.types import Association, Concept


class ClusterClient(SutraClient):
    """``SutraClient(etcd=endpoints, shard=shard)``: one shard's leader, found in
    etcd and followed across failovers (a watch on the leader key keeps the
    address fresh between calls)."""

    def __init__(self, etcd_endpoints: Sequence[str], *, cluster: str = "sutra", shard: int = 0,
                 timeout: float = 10.0, failover_deadline: float = 15.0, watch: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(etcd=etcd_endpoints, cluster=cluster, shard=shard, timeout=timeout,
                         failover_deadline=failover_deadline, watch=watch, **kwargs)


class ShardedClient(SutraClient):
    """``SutraClient(etcd=endpoints)`` routing a sharded cluster itself, as
    before: ``delete_concept`` and ``learn_batch`` return shard -> LSN, ``stats``
    the list of each shard's stats and ``health`` ``(ok, status)``."""

    def __init__(self, etcd_endpoints: Sequence[str] = (), *, cluster: str = "sutra",
                 shard_map: Any = None, read_preference: str = "leader", timeout: float = 10.0,
                 failover_deadline: float = 15.0, read_deadline: float | None = None,
                 credentials: grpc.ChannelCredentials | None = None, **kwargs: Any) -> None:
        from sutra_cluster.errors import ConfigError

        if not etcd_endpoints and shard_map is None:
            raise ConfigError("ShardedClient needs etcd endpoints or a shard map")
        if shard_map is None:
            from sutra_cluster.sharding import shardmap

            shard_map = shardmap.load_from_etcd(etcd_endpoints, cluster)
            if shard_map is None:
                raise ConfigError(f"no shard map in etcd at {shardmap.map_key(cluster)}")
        super().__init__(etcd=etcd_endpoints, cluster=cluster, shard_map=shard_map, read_preference=read_preference,
                         timeout=timeout, failover_deadline=failover_deadline, read_deadline=read_deadline,
                         credentials=credentials, **kwargs)

    def delete_concept(self, concept_id: str, request_id: str = "") -> dict[int, int]:  # type: ignore[override]
        return self._shard_lsns(self._delete_concept(concept_id, request_id))

    def learn_batch(self, concepts: Sequence[Concept] = (), associations: Sequence[Association] = (),  # type: ignore[override]
                    deletes: Sequence[str] = (), request_id: str = "") -> dict[int, int]:
        return self._shard_lsns(self._learn_batch(concepts, associations, deletes, request_id))

    def _shard_lsns(self, call: Call) -> dict[int, int]:
        r = self._invoke(call.method, call.request)
        self._seen(r)
        return {e.shard: e.sequence for e in r.shard_sequences}

    def stats(self) -> list[Any]:  # type: ignore[override]
        return list(super().stats().shards)

    def health(self) -> tuple[bool, str]:  # type: ignore[override]
        h = super().health()
        return h.healthy, h.status


__all__ = ["ClusterClient", "ShardedClient"]
