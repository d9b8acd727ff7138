"""Quickstart: write concepts and associations, read them back, search.

Run against a node or a router (``./dev up`` starts both):

    .venv/bin/python examples/quickstart.py sutra://127.0.0.1:50051
"""

from __future__ import annotations

import sys

import numpy as np

from sutra_cluster.client import Association, Concept, SutraClient


def main(url: str) -> None:
    with SutraClient(url) as client:
        dim = client.stats().vector_dimension  # VECTOR_DIMENSION of the cluster
        rng = np.random.default_rng(0)

        def embed() -> np.ndarray:
            return rng.standard_normal(dim).astype(np.float32)

        # One write at a time: each returns its LSN once it is durable.
        client.learn_concept("qs-rust", "Rust is a systems language", embed(), attributes={"kind": "language"})
        # Or atomically, many at once.
        lsn = client.learn_batch(
            [Concept("qs-tokio", "Tokio is an async runtime for Rust", embed(), attributes={"kind": "library"}),
             Concept("qs-axum", "Axum is a web framework on Tokio", embed(), attributes={"kind": "library"})],
            [Association("qs-axum", "qs-tokio", "compositional"), Association("qs-tokio", "qs-rust", "hierarchical")],
        )

        # sequence= makes a read wait until that write is visible (read-your-writes).
        concept = client.get("qs-axum", sequence=lsn, include_embedding=True)
        assert concept is not None and concept.embedding is not None
        print(f"get: {concept.concept_id} {concept.content!r} embedding {concept.embedding.shape}")
        print("neighbors of qs-tokio:", client.get_neighbors("qs-tokio"))
        print("path qs-axum -> qs-rust:", client.find_path("qs-axum", "qs-rust"))

        hits = client.vector_search(concept.embedding, k=3, with_fields=True)
        for hit in hits:
            print(f"search: {hit.concept_id} {hit.similarity:.3f} {hit.concept.content if hit.concept else ''}")

        print("libraries:", client.count(filter={"kind": "library"}))
        page = client.scroll(limit=10, after_id="qs-")
        print("scroll:", [c.concept_id for c in page.concepts if c.concept_id.startswith("qs-")])


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "sutra://127.0.0.1:50051")
