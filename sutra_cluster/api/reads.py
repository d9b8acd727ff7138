"""The read-side requests added for application clients (issue 14): attribute
filters, multi-get, scroll and count. Validation and the node-side scans live
here; the node's servicer and the router's fan-out both use them, so a request
is refused with the same words wherever it arrives.

Every repeated field and size has a bound, refused INVALID_ARGUMENT naming the
field and the limit before any work is done:

- ``filter``: at most MAX_FILTER_CONDITIONS conditions, each key once, each
  with 1..MAX_FILTER_VALUES values of the attribute limits' sizes;
- ``concept_ids`` (GetConcepts): at most SUTRA_MAX_BATCH ids;
- ``limit`` (ScrollConcepts): at most MAX_SCROLL_LIMIT;
- ``score_threshold``: a finite cosine in [-1, 1].

Answers are bounded too: a GetConcepts answer larger than
SUTRA_MAX_MESSAGE_BYTES is refused RESOURCE_EXHAUSTED (ask for fewer ids, or
without embeddings), and a scroll page ends early at that size (its cursor
says where to go on). Scroll and count are ``ConceptScan``'s.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sutra_cluster.api import validate as model
from sutra_cluster.errors import InvalidArgument, ResourceExhausted
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.storage.state import Concept

MAX_FILTER_CONDITIONS = 16
MAX_FILTER_VALUES = 1024
DEFAULT_SCROLL_LIMIT = 100
MAX_SCROLL_LIMIT = 1000

Where = dict[str, frozenset[str]]


def check_filter(conditions: Sequence[pb.AttributeFilter], field: str = "filter") -> Where:
    """The filter as ``{key: allowed values}``; raises InvalidArgument naming the
    condition and the limit it breaks. An empty filter gives ``{}`` (no filter)."""
    if len(conditions) > MAX_FILTER_CONDITIONS:
        raise InvalidArgument(f"{field} has {len(conditions)} conditions, the limit is {MAX_FILTER_CONDITIONS}")
    where: Where = {}
    for i, cond in enumerate(conditions):
        key = cond.key
        if not key or len(key.encode()) > model.MAX_ATTRIBUTE_KEY_BYTES:
            raise InvalidArgument(f"{field}[{i}].key must be 1..{model.MAX_ATTRIBUTE_KEY_BYTES} bytes")
        if key in where:
            raise InvalidArgument(f"{field}[{i}].key {key!r} is already a condition; list every value "
                                  "in one condition (conditions are ANDed)")
        n = len(cond.values)
        if n == 0:
            raise InvalidArgument(f"{field}[{i}].values is empty; give 1..{MAX_FILTER_VALUES} values")
        if n > MAX_FILTER_VALUES:
            raise InvalidArgument(f"{field}[{i}].values has {n} values, the limit is {MAX_FILTER_VALUES}")
        for j, v in enumerate(cond.values):
            if len(v) * 4 > model.MAX_ATTRIBUTE_VALUE_BYTES and len(v.encode()) > model.MAX_ATTRIBUTE_VALUE_BYTES:
                raise InvalidArgument(f"{field}[{i}].values[{j}] has {len(v.encode())} bytes, the limit is "
                                      f"{model.MAX_ATTRIBUTE_VALUE_BYTES}")
        where[key] = frozenset(cond.values)
    return where


def check_score_threshold(request: pb.VectorSearchRequest) -> float | None:
    """The request's score threshold, or None when it sets none."""
    if not request.HasField("score_threshold"):
        return None
    t = request.score_threshold
    if not math.isfinite(t) or not -1.0 <= t <= 1.0:
        raise InvalidArgument(f"score_threshold is {t}, it must be a cosine between -1 and 1")
    return float(t)


def check_ids(ids: Sequence[str], max_batch: int, field: str = "concept_ids") -> None:
    if len(ids) > max_batch:
        raise InvalidArgument(f"{field} has {len(ids)} ids, SUTRA_MAX_BATCH is {max_batch}")
    for i, cid in enumerate(ids):
        model.check_id(f"{field}[{i}]", cid)


def scroll_limit(limit: int) -> int:
    """The effective page size: 0 means DEFAULT_SCROLL_LIMIT."""
    if limit > MAX_SCROLL_LIMIT:
        raise InvalidArgument(f"limit is {limit}, the limit is {MAX_SCROLL_LIMIT}")
    return limit or DEFAULT_SCROLL_LIMIT


def check_after_id(after_id: str) -> None:
    if after_id:
        model.check_id("after_id", after_id)


def matches(attributes: Mapping[str, str], where: Where) -> bool:
    """Whether a concept with these attributes passes every condition."""
    for key, allowed in where.items():
        value = attributes.get(key)
        if value is None or value not in allowed:
            return False
    return True


def concept_message(cid: str, c: Concept | None, *, content: bool = True, attributes: bool = True,
                    embedding: bool = False) -> pb.QueryConceptResponse:
    """A concept as QueryConcept answers it (``found`` false for None)."""
    if c is None:
        return pb.QueryConceptResponse(found=False, concept_id=cid)
    out = pb.QueryConceptResponse(found=True, concept_id=cid, has_embedding=bool(c.embedding))
    if content:
        out.content, out.strength, out.confidence = c.content, c.strength, c.confidence
        out.created_at_us, out.updated_at_us = c.created_us, c.updated_us
    if attributes and c.attributes:
        out.attributes.update(c.attributes)
    if embedding:
        out.embedding_f32 = c.embedding
    return out


def get_many(concepts: Mapping[str, Concept], ids: Iterable[str], include_embedding: bool,
             max_bytes: int) -> list[pb.QueryConceptResponse]:
    """The concepts named, in order; RESOURCE_EXHAUSTED past ``max_bytes``."""
    out: list[pb.QueryConceptResponse] = []
    size = 0
    for cid in ids:
        m = concept_message(cid, concepts.get(cid), embedding=include_embedding)
        size += m.ByteSize() + 8
        if size > max_bytes:
            raise ResourceExhausted(
                f"the answer would exceed {max_bytes} bytes after {len(out)} concepts; SUTRA_MAX_MESSAGE_BYTES "
                f"is {max_bytes}: ask for fewer ids{' or without embeddings' if include_embedding else ''}")
        out.append(m)
    return out


class ConceptScan:
    """Scroll and count over one engine's visible concepts.

    Unfiltered pages walk a sorted copy of the ids from ``after_id`` on
    (bisect, then ``limit`` steps), rebuilt only when the applied LSN has moved
    since it was sorted, so paging through a quiet node costs O(limit) a page.
    Filtered pages and counts take the matching ids from the engine's attribute
    index (``GraphState.matching``, under the state lock, so a batch's apply is
    seen whole) and sort only those above the cursor. A concept deleted or
    re-attributed after the ids were taken is skipped; one written after may
    or may not be seen (as in any paging over live data)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._lsn = -1
        self._ids: list[str] = []

    def _sorted_ids(self) -> list[str]:
        eng = self.engine
        with self._lock:
            if eng.applied_lsn != self._lsn:
                with eng._lock:  # the state lock: applies are whole batches
                    lsn, keys = eng.applied_lsn, list(eng.state.concepts)
                keys.sort()
                self._lsn, self._ids = lsn, keys
            return self._ids

    def count(self, where: Where) -> int:
        eng = self.engine
        with eng._lock:
            return len(eng.state.concepts) if not where else len(eng.state.matching(where))

    def page(self, after_id: str, limit: int, where: Where, include_embedding: bool,
             max_bytes: int) -> tuple[list[pb.QueryConceptResponse], str]:
        """The first ``limit`` concepts above ``after_id`` (matching ``where``), and
        the cursor for the next page ('' when there is none). A page also ends
        once its answer would pass ``max_bytes``."""
        concepts = self.engine.state.concepts
        if where:
            with self.engine._lock:
                ids: Iterable[str] = sorted(c for c in self.engine.state.matching(where) if c > after_id)
        else:
            order = self._sorted_ids()
            ids = itertools.islice(order, bisect.bisect_right(order, after_id), None)
        out: list[pb.QueryConceptResponse] = []
        size = 0
        for cid in ids:
            c = concepts.get(cid)
            if c is None or (where and not matches(c.attributes, where)):
                continue  # deleted or changed since the ids were taken
            if len(out) == limit:
                return out, out[-1].concept_id  # there is at least one more
            m = concept_message(cid, c, embedding=include_embedding)
            size += m.ByteSize() + 8
            if out and size > max_bytes:  # end the page early; the cursor goes on from here
                return out, out[-1].concept_id
            out.append(m)
        return out, ""


def where_of(request: Any) -> Where:
    """``check_filter`` of a request's ``filter`` field."""
    return check_filter(request.filter)
