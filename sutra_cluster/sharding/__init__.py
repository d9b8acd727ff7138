"""Sharding: the shard map, the jump consistent hash, and routing over shards.

- ``hashing``: concept id -> shard (jump hash of a 64-bit blake2b of the id).
- ``shardmap``: the versioned map in etcd (``/<cluster>/shardmap``) or from
  ``SUTRA_SHARD_MAP``.
- (a node's wrong-shard check is ``api.shard_guard``)
- ``links``: one shard's leader and replicas, followed through etcd.
- ``core``: cross-shard reads and writes, shared by the router process and
  the Python client.
- ``concept_reads``: multi-get, scroll and count across shards.
- ``client``: ``ShardedClient``, the earlier name of the routing ``sutra_cluster.client.SutraClient``.
- ``router``: the router process, serving the whole cluster as one StorageService.
- ``reshard`` (the driver and ``sutra-cluster reshard``), ``reshard_state`` (its
  record and lock in etcd), ``reshard_node`` (ReshardService on every node) and
  ``reshard_follow`` (routers and clients following map versions): online
  resharding, docs/HA.md "Resharding".
"""
