"""``sutra-cluster load``: bulk-load concepts and associations from a JSON-lines
file through one client stream (LearnStream), with a progress bar.

Each line is a concept ``{"concept_id", "content", "embedding": [...],
"strength", "confidence", "attributes"}`` or an association ``{"source_id",
"target_id", "assoc_type", "confidence"}``. Every streamed message is its own
atomic batch; a failed load can be run again (writes are idempotent upserts).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np

from sutra_cluster.backup import Progress
from sutra_cluster.client import Association, BulkLoadResult, Concept, SutraClient
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.tlsutil import peer_credentials


def _batches(path: Path, size: int, progress: Progress) -> Iterator[pb.LearnBatchRequest]:
    concepts: list[Concept] = []
    assocs: list[Association] = []
    seen = 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            seen += len(raw)
            line = raw.decode("utf-8").strip()
            if not line:
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON: {exc}") from None
            if "concept_id" in d:
                emb = d.get("embedding")
                concepts.append(Concept(d["concept_id"], d.get("content", ""),
                                        np.asarray(emb, dtype=np.float32) if emb else None,
                                        float(d.get("strength", 1.0)), float(d.get("confidence", 1.0)),
                                        d.get("attributes") or {}))
            elif "source_id" in d:
                assocs.append(Association(d["source_id"], d["target_id"], int(d.get("assoc_type", 0)),
                                          float(d.get("confidence", 1.0))))
            else:
                raise ValueError(f"{path}:{n}: neither a concept (concept_id) nor an association (source_id)")
            if len(concepts) + len(assocs) >= size:
                yield SutraClient.batch_request(concepts, assocs)
                concepts, assocs = [], []
                progress.update(seen, seen)
    if concepts or assocs:
        yield SutraClient.batch_request(concepts, assocs)


def load(address: str, path: str, batch: int = 500, show_progress: bool = True) -> BulkLoadResult:
    """Stream the file to the node (or router) at ``address``; returns the
    stream's answer (last sequence, counts). Raises ValueError on a bad line
    (nothing after it is sent) and grpc.RpcError on a refused batch."""
    p = Path(path)
    progress = Progress(f"load {p.name}", p.stat().st_size, show_progress)
    creds = peer_credentials(os.environ.get("SUTRA_TLS_CERT", ""), os.environ.get("SUTRA_TLS_KEY", ""),
                             os.environ.get("SUTRA_TLS_CA", ""))
    bad: list[ValueError] = []

    def guarded() -> Iterator[pb.LearnBatchRequest]:
        try:
            yield from _batches(p, batch, progress)
        except ValueError as exc:  # gRPC would only say "Exception iterating requests"
            bad.append(exc)
            raise

    with SutraClient(address, credentials=creds) as c:
        try:
            out = c.bulk_load(guarded())
        except grpc.RpcError:
            if bad:
                raise bad[0] from None
            raise
    progress.finish()
    return out
