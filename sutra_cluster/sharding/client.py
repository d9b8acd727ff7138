"""``ShardedClient``, the routing Python client: now a thin constructor over
``sutra_cluster.client.SutraClient`` (``SutraClient(etcd=[...])`` routes a
sharded cluster itself). Kept so that existing imports keep working."""

from sutra_cluster.client.compat import ShardedClient
from sutra_cluster.sharding.core import ShardsUnavailable
from sutra_cluster.sharding.links import ShardUnavailable

__all__ = ["ShardedClient", "ShardUnavailable", "ShardsUnavailable"]
