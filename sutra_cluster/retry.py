"""The one rule for what a caller does with a failed call: look the leader up
again and retry, retry the same node, or give up. Every client in the project
(the Python client, the router's shard links, a replica's stream) asks this
module; nobody reads error messages to decide.

Servers send a machine-readable reason beside the status code as trailing
metadata ``sutra-reason`` (set from ``SutraError.reason`` in api/status.py).
"""

from __future__ import annotations

from enum import Enum

import grpc

from sutra_cluster import errors

REASON_KEY = "sutra-reason"

NOT_LEADER = errors.NotLeader.reason  # a write reached a replica
NO_LEADER = errors.NoLeader.reason  # the node knows no leader yet
NOT_VISIBLE = errors.NotVisible.reason  # a read's sequence was not visible in time
WRONG_SHARD = errors.WrongShard.reason  # the concept belongs to another shard
STALE_LEADER = "stale-leader"  # a replica has seen a newer term than this leader's (the stream says so itself)
FOREIGN_CLUSTER = "foreign-cluster"  # a replication peer's data belongs to another cluster
MOVING = "moving"  # the key is frozen for a reshard's cutover: retry once the map has moved on
# Beside ``wrong-shard`` and ``moving``: the shard map version the node answered
# by, so a caller on an older map knows to fetch the newer one first.
MAP_VERSION_KEY = "sutra-map-version"


class Retry(Enum):
    NEW_LEADER = "new-leader"  # find the (possibly new) leader, then retry with the same request id
    NEW_MAP = "new-map"  # refresh the shard map (to at least ``map_version``), route again, retry with the same request id
    NEVER = "never"  # the answer stands: retrying cannot help


def _trailer(exc: grpc.RpcError, name: str) -> str:
    try:
        md = exc.trailing_metadata() or ()  # type: ignore[attr-defined]
    except Exception:  # an error raised before any response carries no metadata
        return ""
    for key, value in md:
        if key == name:
            return value if isinstance(value, str) else value.decode()
    return ""


def reason(exc: grpc.RpcError) -> str:
    """The ``sutra-reason`` a server sent with this error, or ''."""
    return _trailer(exc, REASON_KEY)


def map_version(exc: grpc.RpcError) -> int:
    """The shard map version a node refused by (``sutra-map-version``), or 0."""
    v = _trailer(exc, MAP_VERSION_KEY)
    return int(v) if v.isdigit() else 0


def classify(exc: grpc.RpcError, *, write: bool) -> Retry:
    """What to do after ``exc``. Writes carry request ids, so a retry applies once.

    - UNAVAILABLE, CANCELLED (a node stopping, down, electing, or a sync commit not
      acknowledged) and a write to a replica (``not-leader``): find the leader, retry.
    - DEADLINE_EXCEEDED: a hung node for a write, so find the leader; for a read
      that waited for its sequence (``not-visible``) the answer stands.
    - ``wrong-shard`` with a map version, or ``moving``: the key's owner has
      changed or is changing (resharding); a caller that routes by a shard map
      refreshes it and retries. A plain client has no map: for it the answer stands.
    - Everything else (bad input, wrong shard of a static map, exhausted limits): never.
    """
    code = exc.code()  # type: ignore[attr-defined]
    why = reason(exc)
    if why == MOVING or (why == WRONG_SHARD and map_version(exc)):
        return Retry.NEW_MAP
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return Retry.NEW_LEADER
    if code == grpc.StatusCode.FAILED_PRECONDITION and why == NOT_LEADER:
        return Retry.NEW_LEADER
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return Retry.NEVER if (why == NOT_VISIBLE and not write) else Retry.NEW_LEADER
    return Retry.NEVER
