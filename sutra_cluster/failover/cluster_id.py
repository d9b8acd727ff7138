"""The cluster's id in etcd: ``/<cluster>/cluster_uuid``, created once by the
first node that starts, and confirmed by every node before it takes part in
elections (see storage/identity.py for why the id exists)."""

from __future__ import annotations

import logging
from typing import Protocol

from sutra_cluster.failover.keys import cluster_uuid_key
from sutra_cluster.storage.identity import ClusterIdentity, new_cluster_uuid

log = logging.getLogger(__name__)

__all__ = ["confirm"]


class CreateStore(Protocol):
    def create(self, key: str, value: str) -> tuple[bool, str]:
        """Put ``value`` unless ``key`` exists; (created, the value stored now)."""


def confirm(store: CreateStore, identity: ClusterIdentity) -> str:
    """Agree with etcd on the cluster's id; returns it.

    Proposes the id this node's data already holds (a cluster whose etcd was lost
    and recreated keeps its own), else a new one. Raises ForeignCluster when etcd
    holds another id than this node's data (the node belongs to another cluster
    and must not take part), CoordinatorUnavailable when etcd cannot be reached."""
    proposal = identity.uuid or new_cluster_uuid()
    created, stored = store.create(cluster_uuid_key(identity.name), proposal)
    identity.adopt(stored)
    if created:
        log.info("named cluster %s: uuid %s (%s)", identity.name, stored, cluster_uuid_key(identity.name))
    return stored
