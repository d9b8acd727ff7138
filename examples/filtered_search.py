"""Filtered vector search: attributes filter inside the node's search, so the
k results are the k best among the concepts that match (not a filtered top k).

    .venv/bin/python examples/filtered_search.py sutra://127.0.0.1:50051
"""

from __future__ import annotations

import sys

import numpy as np

from sutra_cluster.client import Concept, InvalidArgument, SutraClient

LANGS = ["en", "de", "fr", "ja"]


def main(url: str) -> None:
    with SutraClient(url) as client:
        dim = client.stats().vector_dimension
        rng = np.random.default_rng(1)
        vectors = rng.standard_normal((400, dim)).astype(np.float32)
        lsn = client.learn_batch([
            Concept(f"fx-{i:03d}", f"document {i}", vectors[i],
                    attributes={"lang": LANGS[i % 4], "tier": "gold" if i % 25 == 0 else "basic"})
            for i in range(400)])

        query = vectors[8] + 0.05 * rng.standard_normal(dim).astype(np.float32)
        # Equality, and set membership; conditions are ANDed.
        hits = client.vector_search(query, k=5, sequence=lsn, filter={"lang": "en", "tier": ["gold", "basic"]},
                                    with_fields=("content", "attributes"))
        for hit in hits:
            assert hit.concept is not None
            print(f"en: {hit.concept_id} {hit.similarity:.3f} {hit.concept.attributes['lang']}")

        gold = client.vector_search(query, k=10, filter={"tier": "gold"})
        print("gold hits:", len(gold), "of", client.count(filter={"tier": "gold"}), "gold concepts")

        close = client.vector_search(query, k=50, score_threshold=0.5)
        print("hits with similarity >= 0.5:", [h.concept_id for h in close])

        german = [c.concept_id for c in client.iterate(filter={"lang": "de", "tier": "gold"})]
        print("german gold:", german)

        try:
            client.count(filter={f"key{i}": "x" for i in range(17)})
        except InvalidArgument as exc:  # typed errors name the field and the limit
            print("refused:", exc.details())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "sutra://127.0.0.1:50051")
