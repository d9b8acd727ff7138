"""The asyncio client: the same API as SutraClient, every call a coroutine.

    .venv/bin/python examples/async_client.py sutra://127.0.0.1:50051
"""

from __future__ import annotations

import asyncio
import sys

import numpy as np

from sutra_cluster.client import AsyncSutraClient


async def main(url: str) -> None:
    async with AsyncSutraClient(url) as client:
        dim = (await client.stats()).vector_dimension
        rng = np.random.default_rng(2)
        vectors = rng.standard_normal((20, dim)).astype(np.float32)

        # Twenty writes in flight at once.
        lsns = await asyncio.gather(*(
            client.learn_concept(f"ax-{i:02d}", f"async concept {i}", vectors[i], attributes={"even": str(i % 2 == 0)})
            for i in range(20)))
        print("written up to LSN", max(lsns))

        found = await client.get_concepts(["ax-00", "ax-07", "ax-missing"], sequence=max(lsns))
        print("multi-get:", [c.concept_id if c else None for c in found])

        results = await asyncio.gather(*(client.vector_search(v, k=1, filter={"even": "True"}) for v in vectors[:4]))
        print("nearest even:", [r[0].concept_id for r in results])

        print("count even:", await client.count(filter={"even": "True"}))
        print("iterate:", [c.concept_id async for c in client.iterate(filter={"even": "False"}, page_size=4)][:5])


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "sutra://127.0.0.1:50051"))
