"""sutra.replication.ReplicationService."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from sutra_cluster import auth
from sutra_cluster.api.status import grpc_errors
from sutra_cluster.pb import replication_pb2 as rpb
from sutra_cluster.pb import replication_pb2_grpc
from sutra_cluster.replication.manager import ReplicationManager

BLOCK = 1 << 20


class ReplicationServicer(replication_pb2_grpc.ReplicationServiceServicer):
    def __init__(self, manager: ReplicationManager) -> None:
        self.m = manager

    def StreamWal(self, request_iterator: Iterator[rpb.FollowerMessage],
                  context: grpc.ServicerContext) -> Iterator[rpb.LeaderMessage]:
        # With mutual TLS the certificate names the node, and its hello must carry
        # that name: one node cannot acknowledge in another's sync-set seat.
        ident = auth.peer_identity(context)
        name = ident.name if ident.via == "certificate" else ""
        return self.m.leader.stream(request_iterator, context, peer_name=name)

    def GetSnapshot(self, request: rpb.SnapshotRequest, context: grpc.ServicerContext) -> Iterator[rpb.SnapshotBlock]:
        self.m.leader.check_cluster(f"snapshot requester {request.node_id!r}", request.cluster_name,
                                    request.cluster_uuid, context)
        header, blocks = self.m.engine.snapshot_blocks()
        buf: list[bytes] = []
        size = 0
        first = True
        for b in blocks:
            buf.append(b)
            size += len(b)
            if size >= BLOCK:
                yield rpb.SnapshotBlock(data=b"".join(buf), lsn=header.lsn if first else 0,
                                        term=header.term if first else 0)
                first, buf, size = False, [], 0
        if buf or first:
            yield rpb.SnapshotBlock(data=b"".join(buf), lsn=header.lsn if first else 0, term=header.term if first else 0)

    @grpc_errors
    def GetReplicationStatus(self, request: rpb.ReplicationStatusRequest,
                             context: grpc.ServicerContext) -> rpb.ReplicationStatus:
        return self.m.status()

    @grpc_errors
    def Promote(self, request: rpb.PromoteRequest, context: grpc.ServicerContext) -> rpb.PromoteResponse:
        term, lsn = self.m.promote(request.min_lsn)
        return rpb.PromoteResponse(term=term, lsn=lsn)

    @grpc_errors
    def Reinit(self, request: rpb.ReinitRequest, context: grpc.ServicerContext) -> rpb.ReinitResponse:
        left = context.time_remaining()
        # Answer a little before the caller's deadline, so it hears why (no deadline: 10 minutes).
        return self.m.reinit(timeout=600.0 if left is None else max(0.1, left - 0.5))

    @grpc_errors
    def Follow(self, request: rpb.FollowRequest, context: grpc.ServicerContext) -> rpb.FollowResponse:
        self.m.follow_request(request.leader_address)
        return rpb.FollowResponse(term=self.m.engine.term)
