"""What a logged batch is, as storage sees it: how many items it holds, and the
request-id bookkeeping that makes a retried write apply once. (Validating a
request before it is logged is the API's job: api/validate.py.)"""

from __future__ import annotations

import crc32c

from sutra_cluster.errors import AlreadyExists
from sutra_cluster.pb import storage_pb2, wal_pb2


def batch_items(batch: storage_pb2.LearnBatchRequest | wal_pb2.WalBatch) -> int:
    return len(batch.concepts) + len(batch.associations) + len(batch.delete_concept_ids)


# ---- request ids -----------------------------------------------------------
# A request id names one write: a retry resends the same request and gets the
# first write's LSN. The engine keeps, with each id, a fingerprint of the request
# as logged (without the leader's timestamp), so reusing an id for a different
# payload is refused instead of answered with the old LSN (review M1).

def request_fingerprint(body: bytes | memoryview) -> int:
    """crc32c and length of a logged request's bytes: cheap on the write path, and
    enough to tell a retry from a different write (this is not a security hash)."""
    return (crc32c.crc32c(body) << 32) | (len(body) & 0xFFFFFFFF)


def logged_body(payload: bytes, batch: wal_pb2.WalBatch) -> bytes | memoryview:
    """The request bytes inside a logged payload: the leader appends its timestamp
    (field 15, the highest, so it also ends a plain serialization). A view, not a
    copy: replicas and recovery fingerprint every record (megabytes per batch)."""
    suffix = wal_pb2.WalBatch(timestamp_us=batch.timestamp_us).SerializeToString()
    return memoryview(payload)[: -len(suffix)] if suffix and payload.endswith(suffix) else payload


def same_request(request_id: str, seen: tuple[int, int] | None, fingerprint: int) -> int | None:
    """The LSN of the earlier write with this id (None: a new id). Raises
    AlreadyExists when the id was used for a different payload."""
    if seen is None:
        return None
    if seen[1] != fingerprint:
        shown = request_id if len(request_id) <= 64 else request_id[:64] + "..."
        raise AlreadyExists(
            f"request_id {shown!r} was already used by the write at sequence {seen[0]} with a different payload; "
            "a retry must resend the same request, a new write needs a new request_id")
    return seen[0]
