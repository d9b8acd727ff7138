"""The in-memory graph: concepts, typed edges, and the digest that proves two
nodes hold the same data.

Not thread-safe by itself: the engine holds its state lock around every call.
Concept records are immutable once built, so a shallow copy of the dict is a
consistent snapshot for checkpoints. A concept holds no vector floats: the
vector index keeps the one copy (normalised, with its norm; vecform.py) and a
concept keeps a VectorRef, the vector's fingerprint (for the digest) and where
to read it.
"""

from __future__ import annotations

import gc
import hashlib
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice, repeat
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np

from sutra_cluster.errors import ResourceExhausted
from sutra_cluster.pb import wal_pb2
from sutra_cluster.storage.columns import NO_ATTRIBUTES, interned
from sutra_cluster.storage.untrack import untrack
from sutra_cluster.storage.vecform import (
    FINGERPRINT_VERSION,
    fingerprint_v1,
    fingerprints,
    fingerprints_v1,
    normalise,
)

if TYPE_CHECKING:
    from sutra_cluster.storage.columns import ColumnChunk
    from sutra_cluster.storage.vectors import VectorIndex

EdgeKey = tuple[str, int]  # (other concept id, assoc_type)
MEMORY_SAMPLE = 256  # entries GraphState.memory_estimate reads per map


class VectorRef(NamedTuple):
    """A concept's vector without its floats: the fingerprint of its stored
    form (what the digest covers) and the index that holds it. A tuple, so a
    snapshot load makes a million of them without a Python call each."""

    key: str
    fingerprint: int
    store: VectorIndex | None

    def original_bytes(self) -> bytes:
        """The original vector as little-endian float32 (within float rounding;
        the index's current vector for this key), b"" when there is none."""
        vec = self.store.get(self.key) if self.store is not None else None
        return b"" if vec is None else vec.astype("<f4").tobytes()


class Concept(NamedTuple):
    """Immutable once built (a tuple: cheap to make on the apply path)."""

    content: str
    strength: float
    confidence: float
    attributes: dict[str, str]
    # VectorRef, or None/b"" when the concept has none (raw bytes: a test's
    # hand-made concept, encoded as the original vector).
    vector: VectorRef | bytes | None
    created_us: int
    updated_us: int

    @property
    def embedding(self) -> bytes:
        """The original vector, little-endian float32, b"" when none (read from
        the vector index: within float rounding of what was written)."""
        v = self.vector
        if isinstance(v, VectorRef):
            return v.original_bytes()
        return v or b""


# One stored vector: (normalised float32 row, original length, fingerprint).
Stored = tuple[np.ndarray, float, int]


def stored_forms(raws: list[bytes]) -> list[Stored]:
    """The stored form of original float32 vectors, in one vectorised pass."""
    if not raws:
        return []
    normed, lengths = normalise(np.frombuffer(b"".join(raws), dtype="<f4").reshape(len(raws), -1))
    return list(zip(normed, lengths.tolist(), fingerprints(normed, lengths).tolist()))


class Upserts(dict[str, tuple[np.ndarray, float]]):
    """ApplyResult's upserts by key. ``block``: while it is not None, the whole
    content as one (keys, normalised rows, norms) block, in insertion order,
    so ``iter_vectors`` hands it on without re-joining a row per key (2.5 us
    of a batched record). Any other change to the dict drops the block."""

    block: tuple[list[str], np.ndarray, np.ndarray] | None = None

    def __setitem__(self, key: str, value: tuple[np.ndarray, float]) -> None:
        self.block = None
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.block = None
        super().__delitem__(key)

    def pop(self, *args: Any) -> Any:
        self.block = None
        return super().pop(*args)

    def popitem(self) -> tuple[str, tuple[np.ndarray, float]]:
        self.block = None
        return super().popitem()

    def setdefault(self, *args: Any) -> Any:
        self.block = None
        return super().setdefault(*args)

    def update(self, *args: Any, **kw: Any) -> None:
        self.block = None
        super().update(*args, **kw)

    def clear(self) -> None:
        self.block = None
        super().clear()

    def add_block(self, keys: list[str], rows: np.ndarray, norms: np.ndarray) -> None:
        """Upsert ``keys`` (distinct) with their stored rows; keeps them as one
        block when the dict was empty."""
        empty = not self
        self.update(zip(keys, zip(rows, norms.tolist())))
        if empty:
            self.block = (keys, rows, norms)


@dataclass
class ApplyResult:
    """What one apply changed in the vector index, in order-independent form:
    the last operation per key wins. Upserts are in stored form (row, norm).
    ``blocks``: whole (keys, rows, norms) batches in stored form from a
    columnar snapshot frame, upserted as they are (no per-row step); a
    snapshot load fills either these or ``upserts``, never both for one key."""

    upserts: dict[str, tuple[np.ndarray, float]]
    removes: set[str]
    blocks: list[tuple[list[str], np.ndarray, np.ndarray]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.upserts, Upserts):
            self.upserts = Upserts(self.upserts)


DIGEST_VERSIONS = (1, 2)  # a digest's version is that of the fingerprints it covers (vecform.py)


class GraphState:
    def __init__(self, store: VectorIndex | None = None, fingerprint_version: int = FINGERPRINT_VERSION) -> None:
        self.store = store  # where concepts' VectorRefs read their vectors
        # The version of every VectorRef's fingerprint: this build's, except in a state
        # loaded only to digest an older node's snapshot (backup.py).
        self.fingerprint_version = fingerprint_version
        self.concepts: dict[str, Concept] = {}
        self.out: dict[str, dict[EdgeKey, float]] = {}
        self.inc: dict[str, dict[EdgeKey, float]] = {}
        self.edges = 0
        # Attribute inverted index for filtered search: key -> value -> ids.
        self.by_attr: dict[str, dict[str, set[str]]] = {}
        # Batches logged here, by id(), with the vectors validation read from them (give_vectors).
        self.given: dict[int, tuple[wal_pb2.WalBatch, np.ndarray]] = {}

    def give_vectors(self, batch: wal_pb2.WalBatch, vectors: np.ndarray) -> None:
        """The leader's hand-off: ``vectors`` is the (concepts, dim) float32
        matrix of ``batch``'s ``embedding_f32`` fields, in order, as validation
        read them, so applying ``batch`` (this very object) does not read and
        join them again. Only a saving: a batch without one reads its fields.
        The batch is held, so its id() cannot name another object while the
        entry lives; entries of batches never applied (a failed write) are
        dropped past a few dozen."""
        if len(self.given) >= 64:
            self.given.clear()
        self.given[id(batch)] = (batch, vectors)

    # ---- mutation -------------------------------------------------------
    def apply_batch(self, batch: wal_pb2.WalBatch, vec: ApplyResult) -> None:
        """Apply a logged batch: concepts, then associations, then deletes."""
        ts = batch.timestamp_us
        concepts = self.concepts
        upserts, removes = vec.upserts, vec.removes
        if self._apply_new([(batch.concepts, ts, self._given_vectors(batch, take=True))], vec):
            items = []
        else:
            # Each protobuf field read copies: read every one once.
            items = [(c, c.concept_id, c.embedding_f32) for c in batch.concepts]
        forms = iter(stored_forms([emb for _, _, emb in items if emb]))
        make, store = tuple.__new__, self.store  # records without a NamedTuple __new__ call each
        # Records leave the cyclic collector (storage/untrack.py): one holds strings, numbers, a dict of
        # strings and a VectorRef, whose vector index refers to no record, so it can be in no cycle.
        is_tracked = gc.is_tracked
        strengths: dict[float, float] = {}  # equal numbers share one float object (columns.interned)
        confidences: dict[float, float] = {}
        for c, cid, emb in items:
            attrs = c.attributes
            new_attrs = dict(attrs) if attrs else NO_ATTRIBUTES
            old = concepts.get(cid)
            created = ts
            if old is not None:
                created = old.created_us
                if old.attributes:
                    self._unindex_attrs(cid, old.attributes)
            if new_attrs:
                self._index_attrs(cid, new_attrs)
            if emb:
                row, norm, fp = next(forms)
                ref: VectorRef | None = make(VectorRef, (cid, fp, store))
                untrack(ref)
                upserts[cid] = (row, norm)
                removes.discard(cid)
            else:
                ref = None
                if old is not None and old.vector:
                    upserts.pop(cid, None)
                    removes.add(cid)
            record = make(Concept, (c.content, strengths.setdefault(c.strength, c.strength),
                                    confidences.setdefault(c.confidence, c.confidence), new_attrs, ref, created, ts))
            if not is_tracked(new_attrs):  # (a dict of strings is not)
                untrack(record)
            concepts[cid] = record
        for a in batch.associations:
            self.add_edge(a.source_id, a.target_id, a.assoc_type, a.confidence)
        for cid in batch.delete_concept_ids:
            self.delete_concept(cid, vec)
        for cid in batch.drop_concept_ids:
            self.drop_concept(cid, vec)

    def apply_batches(self, batches: Iterable[wal_pb2.WalBatch], vec: ApplyResult) -> None:
        """Apply logged batches in log order. Consecutive batches that hold only
        new concepts (a load of single writes, replayed at a start or streamed to
        a replica: one concept per record) are applied as one block, as
        ``_apply_new`` applies one batch; each record keeps its own batch's
        timestamp. Any other batch, or a run that is not all new (an id repeated
        or already held, a concept without a vector), is applied one batch at a
        time: the state is the same either way (tests/test_leader_batch.py)."""
        run: list[wal_pb2.WalBatch] = []
        for batch in batches:
            if batch.concepts and not (batch.associations or batch.delete_concept_ids or batch.drop_concept_ids):
                run.append(batch)
                continue
            self._apply_run(run, vec)
            run = []
            self.apply_batch(batch, vec)
        self._apply_run(run, vec)

    def _apply_run(self, run: list[wal_pb2.WalBatch], vec: ApplyResult) -> None:
        if len(run) > 1:
            parts = [(b.concepts, b.timestamp_us, self._given_vectors(b, take=False)) for b in run]
            if self._apply_new(parts, vec):
                for b in run:
                    self._given_vectors(b, take=True)
                return
        for b in run:
            self.apply_batch(b, vec)

    def _given_vectors(self, batch: wal_pb2.WalBatch, take: bool) -> np.ndarray | None:
        """The matrix validation gave for this very batch object (give_vectors),
        or None; ``take`` also drops the entry."""
        if not self.given:
            return None
        given = self.given.pop(id(batch), None) if take else self.given.get(id(batch))
        return given[1] if given is not None and given[0] is batch else None

    def _apply_new(self, parts: list[tuple[Any, int, np.ndarray | None]], vec: ApplyResult) -> bool:
        """Apply the concepts of consecutive batches at once when they are the
        common case of ingest: new ids (none held, none repeated), each with a
        vector. ``parts``: each batch's concepts, its timestamp and the vectors
        validation gave for it (or None). The records, stored forms and
        fingerprints are those apply_batch's per-concept loop makes
        (tests/test_leader_batch.py), built by C-level iteration over columns.
        Returns False, having changed nothing, when the concepts are not of that
        kind."""
        if len(parts) == 1:
            cs = parts[0][0]
        else:
            cs = [c for p in parts for c in p[0]]
        n = len(cs)
        if not n:
            return False
        ids = [c.concept_id for c in cs]
        if any(p[2] is not None for p in parts):
            mats = []
            for part_concepts, _, given in parts:
                m = len(part_concepts)
                if given is None or given.shape[0] != m:
                    embs = [c.embedding_f32 for c in part_concepts]
                    if not all(embs):
                        return False
                    given = np.frombuffer(b"".join(embs), dtype="<f4").reshape(m, -1)
                mats.append(given)
            if len({m.shape[1] for m in mats}) != 1:
                return False
            vectors = mats[0] if len(mats) == 1 else np.concatenate(mats)
        else:
            embs = [c.embedding_f32 for c in cs]
            if not all(embs) or len(set(map(len, embs))) != 1:
                return False
            vectors = np.frombuffer(b"".join(embs), dtype="<f4").reshape(n, -1)
        concepts = self.concepts
        if len(set(ids)) != n or not concepts.keys().isdisjoint(ids):
            return False
        attrs: list[dict[str, str]] | None = None
        if any(c.attributes for c in cs):
            attrs = [dict(a) if a else NO_ATTRIBUTES for a in (c.attributes for c in cs)]
        normed, lengths = normalise(vectors)
        if len(parts) == 1:
            stamps: Iterable[int] = repeat(parts[0][1])
        else:
            stamps = [ts for p in parts for ts in repeat(p[1], len(p[0]))]
        make = tuple.__new__
        refs = list(map(make, repeat(VectorRef), zip(ids, fingerprints(normed, lengths).tolist(), repeat(self.store))))
        records = list(map(make, repeat(Concept), zip(
            [c.content for c in cs], interned(c.strength for c in cs), interned(c.confidence for c in cs),
            repeat(NO_ATTRIBUTES) if attrs is None else attrs, refs, stamps, stamps)))
        # Out of the cyclic collector, as apply_batch's records (storage/untrack.py).
        deque(map(untrack, refs), maxlen=0)
        if attrs is None:
            deque(map(untrack, records), maxlen=0)
        else:
            is_tracked = gc.is_tracked
            for cid, record, own in zip(ids, records, attrs):
                if own:
                    self._index_attrs(cid, own)
                if not is_tracked(own):  # (a dict of strings is not)
                    untrack(record)
        concepts.update(zip(ids, records))
        assert isinstance(vec.upserts, Upserts)
        vec.upserts.add_block(ids, normed, lengths)
        if vec.removes:
            vec.removes.difference_update(ids)
        return True

    def add_edge(self, src: str, dst: str, atype: int, conf: float) -> None:
        outs = self.out.setdefault(src, {})
        if (dst, atype) not in outs:
            self.edges += 1
        outs[(dst, atype)] = conf
        self.inc.setdefault(dst, {})[(src, atype)] = conf

    def _index_attrs(self, cid: str, attrs: dict[str, str]) -> None:
        for key, value in attrs.items():
            self.by_attr.setdefault(key, {}).setdefault(value, set()).add(cid)

    def _unindex_attrs(self, cid: str, attrs: dict[str, str]) -> None:
        for key, value in attrs.items():
            values = self.by_attr.get(key)
            ids = values.get(value) if values is not None else None
            if ids is None:
                continue
            ids.discard(cid)
            if not ids:
                del values[value]  # type: ignore[union-attr]
                if not values:
                    del self.by_attr[key]

    def drop_concept(self, cid: str, vec: ApplyResult) -> None:
        """Resharding's cleanup (WalBatch.drop_concept_ids): remove the concept and
        its outgoing edges, which moved with it, but keep edges into it: they are
        stored here because their sources live here."""
        inc = self.inc.pop(cid, None)
        self.delete_concept(cid, vec)
        for (src, atype), conf in (inc or {}).items():
            if src != cid:  # a self-loop is an outgoing edge: it goes
                self.add_edge(src, cid, atype, conf)  # out[src] kept it; this restores inc[cid]

    def delete_concept(self, cid: str, vec: ApplyResult) -> None:
        old = self.concepts.pop(cid, None)
        if old is not None and old.attributes:
            self._unindex_attrs(cid, old.attributes)
        if old is not None and old.vector:
            vec.upserts.pop(cid, None)
            vec.removes.add(cid)
        for (dst, atype) in self.out.pop(cid, {}):
            self.edges -= 1
            back = self.inc.get(dst)
            if back is not None:
                back.pop((cid, atype), None)
                if not back:
                    del self.inc[dst]
        for (src, atype) in self.inc.pop(cid, {}):
            fwd = self.out.get(src)
            if fwd is not None and fwd.pop((cid, atype), None) is not None:
                self.edges -= 1
                if not fwd:
                    del self.out[src]

    def load_chunk(self, chunk: wal_pb2.SnapshotChunk | ColumnChunk, vec: ApplyResult) -> None:
        """Add a snapshot frame's concepts (vectors into ``vec.upserts``, or
        ``vec.blocks`` for a columns block) and edges.
        A vector with ``embedding_norm`` is taken in its stored form bit for bit;
        without, it is an original (older files) and is normalised here."""
        if not isinstance(chunk, wal_pb2.SnapshotChunk):
            self._load_columns(chunk, vec)
            return
        originals = iter(stored_forms([c.embedding_f32 for c in chunk.concepts
                                       if c.embedding_f32 and not c.embedding_norm > 0]))
        given = iter(self._stored_fingerprints([(c.embedding_f32, c.embedding_norm) for c in chunk.concepts
                                                if c.embedding_f32 and c.embedding_norm > 0]))
        ours = self.fingerprint_version == FINGERPRINT_VERSION
        for c in chunk.concepts:
            old = self.concepts.get(c.concept_id)
            if old is not None and old.attributes:
                self._unindex_attrs(c.concept_id, old.attributes)
            attrs = dict(c.attributes) if c.attributes else NO_ATTRIBUTES
            if attrs:
                self._index_attrs(c.concept_id, attrs)
            emb, ref = c.embedding_f32, None
            if emb:
                norm = c.embedding_norm
                if norm > 0:
                    row, fp = np.frombuffer(emb, dtype="<f4"), next(given)
                else:
                    row, norm, fp = next(originals)
                    if not ours:
                        fp = fingerprint_v1(row, norm)
                ref = VectorRef(c.concept_id, fp, self.store)
                vec.upserts[c.concept_id] = (row, norm)
            self.concepts[c.concept_id] = Concept(
                c.content, c.strength, c.confidence, attrs, ref, c.created_at_us, c.updated_at_us,
            )
        for e in chunk.edges:
            self.add_edge(e.source_id, e.target_id, e.assoc_type, e.confidence)

    def _stored_fingerprints(self, stored: list[tuple[bytes, float]]) -> list[int]:
        """Fingerprints (of ``fingerprint_version``) of vectors given in stored
        form as (float32 bytes, length): one pass when they are rows of one length."""
        fn = fingerprints if self.fingerprint_version == FINGERPRINT_VERSION else fingerprints_v1
        if not stored:
            return []
        if len({len(e) for e, _ in stored}) != 1:  # rows of two lengths (refused later): one at a time
            return [int(fn(np.frombuffer(e, dtype="<f4")[None], np.array([n]))[0]) for e, n in stored]
        rows = np.frombuffer(b"".join(e for e, _ in stored), dtype="<f4").reshape(len(stored), -1)
        return fn(rows, np.array([n for _, n in stored], dtype=np.float64)).tolist()  # type: ignore[no-any-return]

    def _load_columns(self, block: ColumnChunk, vec: ApplyResult) -> None:
        """A columns block (storage.dat versions 2 and 3): its vectors are in stored
        form with their fingerprints, and go to ``vec.blocks`` whole. The
        records are made by C-level iteration (map over tuple.__new__): at a
        million concepts a Python call per concept is seconds of start time."""
        concepts, ids = self.concepts, block.ids
        if not concepts.keys().isdisjoint(ids):  # a repeated id (never written, as load_chunk): unindex first
            for cid in ids:
                old = concepts.get(cid)
                if old is not None and old.attributes:
                    self._unindex_attrs(cid, old.attributes)
        new = tuple.__new__
        refs: Iterable[VectorRef | None] = repeat(None)
        if block.fingerprints is not None:
            refs = map(new, repeat(VectorRef), zip(ids, block.fingerprints, repeat(self.store)))
        records = map(new, repeat(Concept), zip(block.contents, block.strength, block.confidence, block.attributes,
                                                refs, block.created_us, block.updated_us))
        concepts.update(zip(ids, records))  # type: ignore[arg-type]
        for cid, attrs in zip(ids, block.attributes):
            if attrs:
                self._index_attrs(cid, attrs)
        if block.vectors is not None and block.norms is not None:
            vec.blocks.append((ids, block.vectors, block.norms))

    def clear(self) -> None:
        self.__init__(self.store, self.fingerprint_version)  # type: ignore[misc]

    # ---- reads ----------------------------------------------------------
    def memory_estimate(self, sample: int = MEMORY_SAMPLE) -> int:
        """Estimated heap bytes of the concept records, the association maps and
        the attribute index (GetStats' metadata part, with the vector index's own
        arrays): each dict's table exactly, and what its entries refer to from the
        first ``sample`` entries, scaled to the count. An object several sampled
        entries share (the empty attributes dict, a repeated number, an id used as
        a key in two maps) counts once. O(sample); call under the engine's lock
        (the maps must not change meanwhile)."""
        seen: set[int] = set()
        inner_sample = max(1, sample // 16)  # per concept's links or per attribute key: O(sample) in all

        def once(*objs: object) -> int:
            n = 0
            for obj in objs:
                if id(obj) not in seen:
                    seen.add(id(obj))
                    n += sys.getsizeof(obj)
            return n

        def scaled(table: Mapping[Any, Any], entry: Callable[[Any, Any], int], most: int = sample) -> int:
            got = [entry(k, v) for k, v in islice(table.items(), most)]
            return sys.getsizeof(table) + (sum(got) * len(table) // len(got) if got else 0)

        def record(cid: str, c: Concept) -> int:
            n = once(cid, c, c.content, c.strength, c.confidence, c.created_us, c.updated_us)
            if id(c.attributes) not in seen:
                n += once(c.attributes) + sum(once(k, v) for k, v in c.attributes.items())
            ref = c.vector
            if isinstance(ref, VectorRef):
                n += once(ref, ref.fingerprint)
            elif ref:
                n += once(ref)
            return n

        def links(cid: str, inner: dict[EdgeKey, float]) -> int:
            return once(cid) + scaled(inner, lambda key, conf: once(key, key[0], conf), inner_sample)

        def values(key: str, by_value: dict[str, set[str]]) -> int:
            return once(key) + scaled(by_value, lambda value, ids: once(value, ids), inner_sample)

        return (scaled(self.concepts, record) + scaled(self.out, links) + scaled(self.inc, links)
                + scaled(self.by_attr, values))

    def matching(self, where: Mapping[str, Collection[str]]) -> set[str]:
        """Ids of concepts whose attributes satisfy ``where``: for every key,
        the concept's value is one of the listed values (a str counts as one
        value). An empty value list matches nothing; an empty ``where`` is
        the caller's to treat as "no filter" (this returns every concept)."""
        if not where:
            return set(self.concepts)
        groups = []
        for key, values in where.items():
            index = self.by_attr.get(key, {})
            wanted = (values,) if isinstance(values, str) else values
            sets = [index[v] for v in wanted if v in index]
            groups.append(sets)
        groups.sort(key=lambda sets: sum(len(x) for x in sets))
        first = groups[0]
        found: set[str] = set().union(*first) if first else set()
        for sets in groups[1:]:
            if not found:
                break
            found = {cid for cid in found if any(cid in x for x in sets)}
        return found

    def matches(self, cid: str, where: Mapping[str, Collection[str]]) -> bool:
        """Whether concept ``cid`` exists and satisfies ``where`` (as ``matching``)."""
        c = self.concepts.get(cid)
        if c is None:
            return False
        for key, values in where.items():
            value = c.attributes.get(key)
            if value is None or (value != values if isinstance(values, str) else value not in values):
                return False
        return True

    def neighbors(self, cid: str, outgoing: bool, incoming: bool) -> list[tuple[str, int, float, bool]]:
        """(other id, type, confidence, is_outgoing) sorted by id, type, direction."""
        found = []
        if outgoing:
            found += [(d, t, c, True) for (d, t), c in self.out.get(cid, {}).items()]
        if incoming:
            found += [(s, t, c, False) for (s, t), c in self.inc.get(cid, {}).items()]
        found.sort(key=lambda x: (x[0], x[1], not x[3]))
        return found

    def neighbor_count(self, cid: str, outgoing: bool, incoming: bool) -> int:
        """How many entries ``neighbors`` would return, without building them."""
        return (len(self.out.get(cid, ())) if outgoing else 0) + (len(self.inc.get(cid, ())) if incoming else 0)

    def find_path(self, start: str, end: str, depth: int, bound: PathBound | None = None) -> list[str] | None:
        """Shortest path over edges in either direction, at most ``depth`` hops.

        Breadth-first, visiting neighbours in id order, so the answer is the same
        on every node that holds the same data. With ``bound``: raises
        ResourceExhausted past its visits or deadline, and calls its ``pause``
        every PathBound.EVERY expansions (the engine lets writes and reads in there).
        """
        if start == end:
            return [start] if start in self.concepts or start in self.out or start in self.inc else None
        parent: dict[str, str] = {start: start}
        frontier = deque([(start, 0)])
        expanded = 0
        while frontier:
            node, dist = frontier.popleft()
            if dist >= depth:
                continue
            if bound is not None:
                expanded += 1
                if expanded % PathBound.EVERY == 0:
                    bound.check(len(parent), dist, end)
            nxt = {d for d, _ in self.out.get(node, {})} | {s for s, _ in self.inc.get(node, {})}
            for other in sorted(nxt):
                if other in parent:
                    continue
                parent[other] = node
                if other == end:
                    return walk_back(parent, start, end)
                frontier.append((other, dist + 1))
            if bound is not None and len(parent) > bound.max_visits:
                bound.check(len(parent), dist, end)
        return None

    # ---- snapshots ------------------------------------------------------
    def capture(self) -> tuple[dict[str, Concept], list[tuple[str, str, int, float]]]:
        """A consistent copy for a checkpoint; call under the state lock."""
        edges = [(s, d, t, c) for s, outs in self.out.items() for (d, t), c in outs.items()]
        return dict(self.concepts), edges

    def digest(self, version: int | None = None) -> str:
        """sha256 over every concept and edge in a canonical order, hex-encoded.

        A vector counts by its fingerprint, so a digest has that fingerprint's
        version (vecform.py): equal digests of one version mean equal data,
        digests of two versions are not comparable. ``version``: None, the
        state's own (``fingerprint_version``); another is computed from the
        vector index's stored rows (about as costly per vector as the hash
        itself: on demand only), so a node can answer an older node's digest
        during a rolling upgrade. Raises ValueError for a version this build
        does not know, or another version of a state without a vector index."""
        if version is not None and version not in DIGEST_VERSIONS:
            raise ValueError(f"digest version {version} is not one of {DIGEST_VERSIONS}")
        again = None if version in (None, self.fingerprint_version) else self._fingerprints_of(version)
        h = hashlib.sha256()
        pack = struct.Struct("<ffqq").pack
        for cid in sorted(self.concepts):
            c = self.concepts[cid]
            h.update(cid.encode() + b"\0" + c.content.encode() + b"\0")
            h.update(pack(c.strength, c.confidence, c.created_us, c.updated_us))
            for k in sorted(c.attributes):
                h.update(k.encode() + b"\1" + c.attributes[k].encode() + b"\2")
            v = c.vector
            if isinstance(v, VectorRef):  # the stored form's fingerprint: same bits on every node
                h.update(b"v" + (v.fingerprint if again is None else again[cid]).to_bytes(8, "little"))
            else:
                h.update(len(v or b"").to_bytes(4, "little") + (v or b""))
        h.update(b"edges")
        for src in sorted(self.out):
            for (dst, t), conf in sorted(self.out[src].items()):
                h.update(src.encode() + b"\0" + dst.encode() + b"\0" + struct.pack("<If", t, conf))
        return h.hexdigest()


    def _fingerprints_of(self, version: int) -> dict[str, int]:
        """Every vector's fingerprint of ``version``, from the stored rows (read a
        block at a time: one index lookup per key cost ~50 us)."""
        keys = [cid for cid, c in self.concepts.items() if isinstance(c.vector, VectorRef)]
        if not keys:
            return {}
        if self.store is None:
            raise ValueError(f"a digest of version {version} needs the vector index, this state has none")
        fn = fingerprints_v1 if version == 1 else fingerprints
        out: dict[str, int] = {}
        for block_keys, rows, norms in self.store.stored_batches():
            out.update(zip(block_keys, fn(rows, norms).tolist()))
        missing = [k for k in keys if k not in out]
        if missing:
            raise ValueError(f"digest version {version}: the vector index holds no vector for {missing[0]!r}")
        return out


@dataclass
class PathBound:
    """The work one FindPath may do: ``max_visits`` concepts, until ``deadline``
    (time.monotonic(), ``max_ms`` after it began), and ``pause()`` between steps to let others take the lock."""

    max_visits: int
    max_ms: int
    deadline: float
    pause: Callable[[], None] | None = None
    EVERY: ClassVar[int] = 256  # expansions between two checks (and pauses)

    def check(self, visited: int, dist: int, end: str) -> None:
        if visited > self.max_visits:
            raise ResourceExhausted(
                f"FindPath visited {visited} concepts (depth {dist}) without reaching {end!r}; "
                f"SUTRA_MAX_PATH_VISITS is {self.max_visits}: lower max_depth")
        if time.monotonic() > self.deadline:
            raise ResourceExhausted(
                f"FindPath searched for {self.max_ms} ms ({visited} concepts visited, depth {dist}) without "
                f"reaching {end!r}; SUTRA_MAX_PATH_MS is {self.max_ms}: lower max_depth")
        if self.pause is not None:
            self.pause()


def walk_back(parent: dict[str, str], start: str, end: str) -> list[str]:
    """The path start..end from a BFS parent map (shared with the router's BFS)."""
    path = [end]
    while path[-1] != start:
        path.append(parent[path[-1]])
    return path[::-1]


def iter_vectors(upserts: dict[str, tuple[np.ndarray, float]],
                 dim: int) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
    """Group stored-form upserts into (keys, (n, dim) normalised float32 matrix,
    norms) for one ``VectorIndex.upsert(keys, matrix, norms)`` call."""
    block = getattr(upserts, "block", None)
    if block is not None:
        yield block
    elif upserts:
        keys = list(upserts)
        rows = [r for r, _ in upserts.values()]
        # concatenate, not stack: stack makes a Python call per row (2 us each on a 1,000-row batch).
        mat = np.concatenate(rows).reshape(len(keys), dim) if rows else np.empty((0, dim), np.float32)
        yield keys, mat, np.fromiter((n for _, n in upserts.values()), dtype=np.float64, count=len(keys))
