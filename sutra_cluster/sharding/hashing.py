"""Concept id -> shard.

Jump consistent hash (Lamping & Veach, 2014, "A Fast, Minimal Memory,
Consistent Hash Algorithm") of a stable 64-bit hash of the id's UTF-8 bytes
(the first 8 bytes of blake2b, little-endian). Why jump hash rather than a ring
with virtual nodes:

- no state: the shard count is the whole configuration, so every router,
  client and node computes the same owner from the map's ``shards`` alone;
- balanced: each shard gets 1/S of the keys (up to sampling noise), where a
  ring needs hundreds of virtual nodes per shard to get close;
- minimal movement: going from S to S+1 shards moves only ~1/(S+1) of the
  keys, all of them to the new shard.
Its limit: shards are numbered 0..S-1 and only the last can be removed, which
suits shards that are replication groups (they are added, never dropped
from the middle).

blake2b rather than Python's ``hash``: stable across processes, versions and
languages (a client in another language computes the same owner).
"""

from __future__ import annotations

import hashlib

HASH_NAME = "jump-blake2b64"
_MASK64 = (1 << 64) - 1


def key_hash(concept_id: str) -> int:
    """Stable unsigned 64-bit hash of the id's UTF-8 bytes."""
    return int.from_bytes(hashlib.blake2b(concept_id.encode("utf-8"), digest_size=8).digest(), "little")


def jump_hash(key: int, buckets: int) -> int:
    """Lamping & Veach's jump consistent hash of a 64-bit key into 0..buckets-1."""
    if buckets < 1:
        raise ValueError(f"buckets is {buckets}, it must be >= 1")
    key &= _MASK64
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & _MASK64
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def shard_for(concept_id: str, shards: int) -> int:
    """The shard (0..shards-1) that owns ``concept_id``."""
    if shards <= 1:
        return 0
    return jump_hash(key_hash(concept_id), shards)
