"""Which cluster a data directory belongs to: ``cluster.id``, the cluster's name
and a random id (uuid4) chosen once for the whole cluster.

Why it exists: a leader counts the replicas that stream from it toward sync
acknowledgements. Without an identity check, any node that reaches a leader's
port (another cluster's replica pointed at a reused address, a node left over
from an earlier run) is fed, and counted, as a replica of this cluster. With it,
a replica's hello carries the id of the cluster its data came from; a leader
refuses a different one, and a replica refuses a leader of another cluster
before it acts on anything the leader says (a term, a cut, a snapshot).

Who chooses the id:
- with etcd, the first node to start creates ``/<cluster>/cluster_uuid``
  (proposing the id it already holds, if any, so a cluster whose etcd was lost
  and recreated keeps its own); every node adopts the stored one and a node
  whose data says otherwise never takes part (it belongs to another cluster);
- without etcd, a node that leads and has no id creates one, and replicas adopt
  their leader's id on their first accepted stream.

A node with no id yet (new, or written by a version before this file existed)
is accepted and adopts the id; from then on it belongs to that cluster. Moving a
node to another cluster means starting it with an empty data directory.
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

from sutra_cluster.storage.fsio import replace_durably, write_file_synced

IDENTITY_FILE = "cluster.id"

__all__ = ["IDENTITY_FILE", "ClusterIdentity", "ForeignCluster", "new_cluster_uuid"]


class ForeignCluster(Exception):
    """The data or the peer belongs to another cluster."""


def new_cluster_uuid() -> str:
    return str(uuid.uuid4())


def _valid_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


class ClusterIdentity:
    """The ``cluster.id`` of one data directory. Thread-safe; every change is
    durable (tmp + fsync + rename + directory fsync) before it is visible."""

    def __init__(self, data_dir: Path, name: str) -> None:
        """Load the id, if any. Raises ForeignCluster when the file names another
        cluster than ``name`` (SUTRA_CLUSTER_NAME), ValueError when it is damaged."""
        self.path = Path(data_dir) / IDENTITY_FILE
        self.name = name
        self._lock = threading.Lock()
        self.uuid = self._load()

    def _load(self) -> str:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ""
        try:
            doc = json.loads(raw)
            name, value = doc["cluster"], doc["uuid"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{self.path} is damaged (expected JSON with \"cluster\" and \"uuid\"); "
                             "restore it from another node of the same cluster, or start with an empty "
                             "data directory") from None
        if not isinstance(name, str) or not isinstance(value, str) or not _valid_uuid(value):
            raise ValueError(f"{self.path} is damaged: uuid {value!r} is not a uuid")
        if name != self.name:
            raise ForeignCluster(f"this data directory belongs to cluster {name!r} ({self.path}), "
                                 f"but SUTRA_CLUSTER_NAME is {self.name!r}")
        return value

    def _store(self, value: str) -> None:
        tmp = self.path.with_name(IDENTITY_FILE + ".tmp")
        body = json.dumps({"cluster": self.name, "uuid": value}, sort_keys=True) + "\n"
        write_file_synced(tmp, body.encode())
        replace_durably(tmp, self.path)

    def ensure(self) -> str:
        """This node's id, created (durably) when it has none: a leader without etcd."""
        with self._lock:
            if not self.uuid:
                value = new_cluster_uuid()
                self._store(value)
                self.uuid = value
            return self.uuid

    def adopt(self, value: str) -> None:
        """Take ``value`` as this node's cluster id (durably). A no-op when it is
        already; raises ForeignCluster when the node holds another id."""
        if not _valid_uuid(value):
            raise ForeignCluster(f"cluster uuid {value!r} is not a uuid")
        with self._lock:
            if self.uuid == value:
                return
            if self.uuid:
                raise ForeignCluster(f"this node's data belongs to cluster {self.name}/{self.uuid}, "
                                     f"not {self.name}/{value}; to join that cluster, start the node with an "
                                     "empty data directory")
            self._store(value)
            self.uuid = value

    def refusal(self, peer: str, name: str, value: str) -> str | None:
        """Why a peer claiming cluster ``name`` / ``value`` is refused, or None.

        Empty claims come from nodes without an id yet (new, or older versions)
        and are accepted: they adopt this cluster's id."""
        if name and name != self.name:
            return (f"{peer} belongs to cluster {name!r}, this node to {self.name!r} "
                    "(SUTRA_CLUSTER_NAME differs)")
        mine = self.uuid
        if value and mine and value != mine:
            return (f"{peer} belongs to cluster {self.name}/{value}, this node to {self.name}/{mine}: it is a "
                    "member of another cluster (a reused address, or a leftover node); to join this cluster, "
                    "start it with an empty data directory")
        return None
