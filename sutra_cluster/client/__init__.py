"""The Python client for Sutra Cluster.

```python
import numpy as np
from sutra_cluster.client import SutraClient

with SutraClient("sutra://127.0.0.1:50051") as c:
    c.learn_concept("c1", "hello", np.ones(768, np.float32), attributes={"lang": "en"})
    hits = c.vector_search(np.ones(768, np.float32), k=5, filter={"lang": "en"}, with_fields=True)
    print(hits[0].concept_id, hits[0].similarity, hits[0].concept.content)
```

- ``SutraClient``: one client for a node, a router, a replication group, or a
  cluster found through etcd (sharded or not); TLS and mutual TLS; URLs
  (``sutra://``, ``sutra+etcd://``, see ``sutra_cluster.client.options``).
- ``AsyncSutraClient`` (``sutra_cluster.client.aio``): the same API on asyncio.
- Results are dataclasses (``sutra_cluster.client.types``) with numpy
  embeddings; errors are typed (``sutra_cluster.client.errors``).
- ``ClusterClient`` and ``ShardedClient``: the earlier names, thin
  constructors over ``SutraClient``.
"""

from sutra_cluster.client import errors
from sutra_cluster.client.aio import AsyncSutraClient
from sutra_cluster.client.calls import READ_METHODS
from sutra_cluster.client.compat import ClusterClient, ShardedClient
from sutra_cluster.client.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NoLeader,
    NotFound,
    NotLeader,
    NotVisible,
    PermissionDenied,
    ResourceExhausted,
    ShardsUnavailable,
    ShardUnavailable,
    SutraRpcError,
    Unavailable,
    WrongShard,
)
from sutra_cluster.client.options import parse_url, tls_credentials
from sutra_cluster.client.sync import SutraClient, batches_of
from sutra_cluster.client.types import (
    Association,
    BulkLoadResult,
    Concept,
    Digest,
    Filter,
    FlushResult,
    Health,
    Neighbor,
    Page,
    SearchHit,
    Stats,
)

__all__ = [
    "SutraClient", "AsyncSutraClient", "ClusterClient", "ShardedClient", "batches_of", "parse_url",
    "tls_credentials", "Concept", "Association", "SearchHit", "Neighbor", "Page", "Stats", "Health", "Digest",
    "FlushResult", "BulkLoadResult", "Filter", "READ_METHODS", "errors", "SutraRpcError", "InvalidArgument",
    "NotFound", "FailedPrecondition", "NotLeader", "WrongShard", "Unavailable", "NoLeader", "DeadlineExceeded",
    "NotVisible", "ResourceExhausted", "AlreadyExists", "PermissionDenied", "ShardUnavailable", "ShardsUnavailable",
]
