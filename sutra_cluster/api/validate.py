"""Request validation and the limits it enforces (the API layer).

Every check here runs before anything is logged, so a rejected request writes
nothing. Messages name the field and the limit, as operators read them from
grpcurl (``embedding has 512 values, VECTOR_DIMENSION is 768``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sutra_cluster.errors import InvalidArgument
from sutra_cluster.pb import storage_pb2, wal_pb2
from sutra_cluster.storage.batch import batch_items

MAX_ID_BYTES = 256
# Request ids are kept in memory (Engine.request_ids) and logged with every
# record: bounded so that retry keys cannot pin memory. 1 KiB leaves room for the
# router's purge ids (``<client id>:purge:<concept id>``).
MAX_REQUEST_ID_BYTES = 1024
MAX_CONTENT_BYTES = 10 * 1024 * 1024
MAX_ATTRIBUTES = 1024
MAX_ATTRIBUTE_KEY_BYTES = 256
MAX_ATTRIBUTE_VALUE_BYTES = 64 * 1024
MAX_PATH_DEPTH = 20
DEFAULT_PATH_DEPTH = 6
MAX_K = 1000
MAX_EF_SEARCH = 4096
ASSOC_TYPES = {0: "semantic", 1: "causal", 2: "temporal", 3: "hierarchical", 4: "compositional"}


@dataclass(frozen=True)
class Limits:
    """The configurable limits, taken from the node's Config."""

    dimension: int
    max_batch: int
    max_message_bytes: int


def check_id(field: str, value: str) -> None:
    """Raise InvalidArgument unless ``value`` is a non-empty id of at most 256 UTF-8
    bytes without NUL (the state digest separates ids with NUL, so an id holding
    one could make two different states hash alike)."""
    if not value:
        raise InvalidArgument(f"{field} is empty")
    n = len(value.encode("utf-8"))
    if n > MAX_ID_BYTES:
        raise InvalidArgument(f"{field} has {n} bytes, the limit is {MAX_ID_BYTES}")
    if "\0" in value:
        raise InvalidArgument(f"{field} contains a NUL character at index {value.index(chr(0))}")


def check_request_id(value: str, field: str = "request_id", limit: int = MAX_REQUEST_ID_BYTES) -> None:
    """Raise InvalidArgument when a request id is longer than ``limit`` UTF-8 bytes."""
    if len(value) * 4 > limit:  # cheap pre-test: 4 bytes per character at most
        n = len(value.encode("utf-8"))
        if n > limit:
            raise InvalidArgument(f"{field} has {n} bytes, the limit is {limit}")


DIRECTIONS = {0: "BOTH", 1: "OUTGOING", 2: "INCOMING"}


def check_direction(value: int) -> None:
    """Raise InvalidArgument for a direction outside the Direction enum (protobuf
    keeps unknown enum numbers; they used to be read as BOTH)."""
    if value not in DIRECTIONS:
        raise InvalidArgument(f"direction is {value}, it must be 0..2 (BOTH, OUTGOING, INCOMING)")


def _check_unit(field: str, value: float) -> None:
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise InvalidArgument(f"{field} is {value}, it must be between 0 and 1")


def _check_strength(field: str, value: float) -> None:
    if not math.isfinite(value) or value < 0.0:
        raise InvalidArgument(f"{field} is {value}, it must be a finite number >= 0")


def vector_from_request(field: str, floats: object, raw: bytes, dim: int) -> np.ndarray | None:
    """The (dim,) float32 vector a request carries, or None when it carries none.

    ``floats`` is a repeated-float field (the grpcurl path), ``raw`` the
    little-endian float32 bytes (the fast path). Raises InvalidArgument on a wrong
    length, both forms at once, NaN or infinity, or an all-zero vector.
    """
    n_floats = len(floats)  # type: ignore[arg-type]
    if raw and n_floats:
        raise InvalidArgument(f"{field}: send either the float list or the float32 bytes, not both")
    if raw:
        if len(raw) % 4:
            raise InvalidArgument(f"{field}_f32 has {len(raw)} bytes, not a whole number of float32 values")
        vec = np.frombuffer(raw, dtype="<f4")
    elif n_floats:
        vec = np.asarray(floats, dtype=np.float32)
    else:
        return None
    if vec.shape[0] != dim:
        raise InvalidArgument(f"{field} has {vec.shape[0]} values, VECTOR_DIMENSION is {dim}")
    _check_vectors(field, vec.reshape(1, dim))
    return vec


def _sums_of_squares(mat: np.ndarray) -> np.ndarray:
    """Each row's sum of squares (float32), for the checks below only: their
    rounding does not matter. One row (a single write) is a matrix-vector
    product, which numpy runs without letting go of the GIL; einsum lets go and
    takes it back, a hand-over to another thread on a busy node and a wait to
    get it back (issue 13: ~18 such hand-overs per concurrent single write).
    A finite row whose squares overflow sums to inf and is judged value by
    value below, as with einsum; matmul would also warn about it (einsum does
    not), so that is switched off for the call."""
    if mat.shape[0] == 1:
        with np.errstate(over="ignore"):
            return mat @ mat[0]
    return np.einsum("ij,ij->i", mat, mat)


def _check_vectors(field: str, mat: np.ndarray) -> None:
    norms = _sums_of_squares(mat)
    # A NaN or infinite value makes its row's sum of squares NaN or infinite, so
    # finite non-zero sums clear every row at once, without a pass over each value.
    if np.isfinite(norms).all() and norms.all():
        return
    finite = np.isfinite(mat).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise InvalidArgument(f"{field} #{row} contains NaN or infinite values")
    norms = np.einsum("ij,ij->i", mat, mat)
    if (norms == 0).any():
        row = int(np.argmin(norms))
        raise InvalidArgument(f"{field} #{row} is all zeros; cosine similarity needs a non-zero vector")


def _check_attributes(prefix: str, attrs: object) -> None:
    items = attrs.items()  # type: ignore[attr-defined]
    if len(items) > MAX_ATTRIBUTES:
        raise InvalidArgument(f"{prefix}attributes has {len(items)} entries, the limit is {MAX_ATTRIBUTES}")
    for key, value in items:
        if not key or len(key.encode()) > MAX_ATTRIBUTE_KEY_BYTES:
            raise InvalidArgument(f"{prefix}attributes key must be 1..{MAX_ATTRIBUTE_KEY_BYTES} bytes")
        if len(value.encode()) > MAX_ATTRIBUTE_VALUE_BYTES:
            raise InvalidArgument(
                f"{prefix}attributes[{key!r}] has {len(value.encode())} bytes, "
                f"the limit is {MAX_ATTRIBUTE_VALUE_BYTES}"
            )


def check_concept(req: storage_pb2.LearnConceptRequest, limits: Limits, prefix: str = "") -> None:
    """Validate one concept except its vector (see ``normalise_embeddings``)."""
    check_id(f"{prefix}concept_id", req.concept_id)
    if not req.content:
        raise InvalidArgument(f"{prefix}content is empty")
    n = len(req.content.encode("utf-8"))
    if n > MAX_CONTENT_BYTES:
        raise InvalidArgument(f"{prefix}content has {n} bytes, the limit is {MAX_CONTENT_BYTES}")
    _check_strength(f"{prefix}strength", req.strength)
    _check_unit(f"{prefix}confidence", req.confidence)
    if req.attributes:
        _check_attributes(prefix, req.attributes)


def _concepts_pass(concepts: Any) -> bool:
    """True when every concept passes ``check_concept`` (without its attributes'
    own checks, run here for the few that have any). Whole columns at a time,
    each field read once: a Python call per concept cost ~6 us of a batched
    record's ~45. False means "look one by one" (a pre-test can be unsure): the
    caller then raises exactly the error ``check_concept`` names first."""
    ids = [c.concept_id for c in concepts]
    contents = [c.content for c in concepts]
    if not all(ids) or not all(contents) or "\0" in "".join(ids):
        return False
    # A character is 1..4 UTF-8 bytes: only long strings need encoding to know.
    if max(map(len, ids)) * 4 > MAX_ID_BYTES and any(len(s.encode("utf-8")) > MAX_ID_BYTES for s in ids):
        return False
    if max(map(len, contents)) * 4 > MAX_CONTENT_BYTES and any(
            len(s.encode("utf-8")) > MAX_CONTENT_BYTES for s in contents):
        return False
    # NaN fails every comparison, infinity the upper bounds: as math.isfinite does.
    strength = np.array([c.strength for c in concepts], dtype=np.float64)
    confidence = np.array([c.confidence for c in concepts], dtype=np.float64)
    if not ((strength >= 0.0) & (strength < math.inf)).all():
        return False
    if not ((confidence >= 0.0) & (confidence <= 1.0)).all():
        return False
    try:
        for attrs in [a for c in concepts if (a := c.attributes)]:
            _check_attributes("", attrs)
    except InvalidArgument:
        return False  # the caller names the concept
    return True


def check_association(req: storage_pb2.LearnAssociationRequest, prefix: str = "") -> None:
    check_id(f"{prefix}source_id", req.source_id)
    check_id(f"{prefix}target_id", req.target_id)
    if req.assoc_type not in ASSOC_TYPES:
        raise InvalidArgument(
            f"{prefix}assoc_type is {req.assoc_type}, it must be 0..4 "
            "(semantic, causal, temporal, hierarchical, compositional)"
        )
    _check_unit(f"{prefix}confidence", req.confidence)


def normalise_embeddings(concepts: Iterable[Any], dim: int, prefix: str = "concepts",
                         vectors_out: list[np.ndarray] | None = None) -> bool:
    """Validate every concept's vector and move it to ``embedding_f32`` in place.

    The fast path (all float32 bytes) is checked with one numpy pass over the
    joined bytes; only concepts sent with a float list are converted one by one.
    Returns True when it converted any (the request's bytes then changed).
    ``vectors_out``: when every concept came with float32 bytes, the checked
    (concepts, dim) matrix of them, in order, is appended there (the engine's
    apply takes it instead of reading and joining the bytes again).
    """
    concepts = list(concepts)
    # One pass reads each field once (every read of a bytes field copies it).
    pairs = [(c.embedding_f32, len(c.embedding)) for c in concepts]
    if any(n for _, n in pairs):
        return _normalise_each(concepts, dim, prefix)
    raws = [r for r, _ in pairs if r]
    if raws:
        if any(len(r) != 4 * dim for r in raws):
            return _normalise_each(concepts, dim, prefix)  # names the first wrong one
        mat = np.frombuffer(b"".join(raws), dtype="<f4").reshape(len(raws), dim)
        _check_vectors(f"{prefix} embedding", mat)
        if vectors_out is not None and len(raws) == len(pairs):
            vectors_out.append(mat)
    return False


def _normalise_each(concepts: list[Any], dim: int, prefix: str) -> bool:
    """normalise_embeddings one concept at a time: float lists, or an error to name."""
    raws: list[bytes] = []
    converted = False
    for i, c in enumerate(concepts):
        if c.embedding:
            vec = vector_from_request(f"{prefix}[{i}].embedding", c.embedding, c.embedding_f32, dim)
            assert vec is not None
            c.embedding_f32 = vec.astype("<f4").tobytes()
            del c.embedding[:]
            converted = True
        elif c.embedding_f32:
            if len(c.embedding_f32) != 4 * dim:
                raise InvalidArgument(
                    f"{prefix}[{i}].embedding has {len(c.embedding_f32) / 4:g} values, VECTOR_DIMENSION is {dim}"
                )
            raws.append(c.embedding_f32)
    if raws:
        mat = np.frombuffer(b"".join(raws), dtype="<f4").reshape(len(raws), dim)
        _check_vectors(f"{prefix} embedding", mat)
    return converted


def check_batch(batch: storage_pb2.LearnBatchRequest | wal_pb2.WalBatch, limits: Limits,
                size: int | None = None, vectors_out: list[np.ndarray] | None = None) -> bool:
    """Validate a whole batch; it is accepted entirely or not at all. Returns
    True when float-list embeddings were converted to float32 bytes in place.
    ``size``: the request's length when the caller has its bytes (saves a pass).
    ``vectors_out``: as for ``normalise_embeddings``."""
    size = batch.ByteSize() if size is None else size
    if size > limits.max_message_bytes:
        raise InvalidArgument(
            f"message has {size} bytes, SUTRA_MAX_MESSAGE_BYTES is {limits.max_message_bytes}"
        )
    check_request_id(batch.request_id)
    items = batch_items(batch)
    if items == 0:
        raise InvalidArgument("batch is empty")
    if items > limits.max_batch:
        raise InvalidArgument(f"batch has {items} items, SUTRA_MAX_BATCH is {limits.max_batch}")
    concepts = batch.concepts
    if concepts and not _concepts_pass(concepts):
        for i, c in enumerate(concepts):  # the first bad concept, named as ever
            check_concept(c, limits, f"concepts[{i}].")
    for i, a in enumerate(batch.associations):
        check_association(a, f"associations[{i}].")
    for i, cid in enumerate(batch.delete_concept_ids):
        check_id(f"delete_concept_ids[{i}]", cid)
    return normalise_embeddings(batch.concepts, limits.dimension, vectors_out=vectors_out)


def check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise InvalidArgument(f"k is {k}, it must be 1..{MAX_K}")


def check_ef_search(ef: int) -> None:
    if ef > MAX_EF_SEARCH:
        raise InvalidArgument(f"ef_search is {ef}, the limit is {MAX_EF_SEARCH}")


def path_depth(max_depth: int) -> int:
    """The effective BFS depth: 0 means the default; above 20 is rejected."""
    if max_depth > MAX_PATH_DEPTH:
        raise InvalidArgument(f"max_depth is {max_depth}, the limit is {MAX_PATH_DEPTH}")
    return max_depth or DEFAULT_PATH_DEPTH


