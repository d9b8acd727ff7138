"""Vector memory by part and index readiness, for GetStats and metrics.

Parts: ``vectors`` (the one float32 copy: the flat rows not yet in the graph
plus the graph's storage), ``index`` (HNSW links), ``metadata`` (per-vector
arrays and keys, plus the concept records, association maps and attribute
index: GraphState.memory_estimate, from a sample).
"Ready" means the graph covers all but READY_PENDING vectors (or there are
too few vectors to need one): searches no longer scan a large tail exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# vectors: full vectors on the heap; vectors_mapped: in the SUTRA_VECTOR_STORAGE=mmap
# file map (page cache, resident only while touched); index: graph links plus sq8 codes.
PARTS = (("vectors", "vector_bytes"), ("vectors_mapped", "mapped_vector_bytes"), ("index", "index_bytes"),
         ("metadata", "metadata_bytes"))


# What the maintainer thread is doing (VectorIndex.index_state), one series each.
INDEX_STATES = ("idle", "paused", "indexing", "forced")

READY_PENDING = 1024  # vectors outside the graph a ready index may still scan exactly (~3 MB at 768-d)


def index_ready(stats: dict[str, int], exact_limit: int) -> bool:
    """True when searches are as fast as the graph makes them: few vectors in
    all (search is exact by design), or all but READY_PENDING in the graph."""
    if stats["live"] <= exact_limit:
        return True
    return stats["hnsw_total"] > 0 and stats["pending"] <= READY_PENDING


def vector_stats(vectors: Any, source: str, records: int = 0) -> dict[str, int | str | bool]:
    """GetStats fields: memory by part, readiness, and where the graph came from.
    ``records``: the concept records' estimated bytes, counted in metadata."""
    s = vectors.stats()
    return {"vector_memory_bytes": s["vector_bytes"], "index_memory_bytes": s["index_bytes"],
            "metadata_memory_bytes": s["metadata_bytes"] + records,
            "vector_index_ready": index_ready(s, vectors.exact_limit),
            "vector_index_source": source}


class VectorCollector(Collector):
    """sutra_vector_memory_bytes{part}, sutra_vector_index_ready and
    sutra_vector_index_state{state}, read at scrape time."""

    def __init__(self, vectors: Any, records: Callable[[], int] = lambda: 0) -> None:
        self.vectors = vectors
        self.records = records  # the concept records' estimated bytes, counted in metadata

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = self.vectors.stats()
        s = {**s, "metadata_bytes": s["metadata_bytes"] + self.records()}
        mem = GaugeMetricFamily("sutra_vector_memory_bytes", "Memory the vector index holds, by part (metadata: "
                                "its per-vector arrays and the concept records, estimated)", labels=["part"])
        for part, key in PARTS:
            mem.add_metric([part], s[key])
        yield mem
        yield GaugeMetricFamily("sutra_vector_index_ready",
                                "1 when the ANN graph covers all but 1024 vectors (searches are fast), else 0",
                                value=1 if index_ready(s, self.vectors.exact_limit) else 0)
        now = self.vectors.index_state
        state = GaugeMetricFamily("sutra_vector_index_state",
                                  "1 for what the index maintainer does now: idle, paused (graph work waits for a "
                                  "lull in writes), indexing, or forced (indexing while writes flow: the "
                                  "unindexed tail passed SUTRA_INDEX_MAX_TAIL)", labels=["state"])
        for name in INDEX_STATES:
            state.add_metric([name], 1 if name == now else 0)
        yield state
