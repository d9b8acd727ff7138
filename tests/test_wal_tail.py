"""The in-memory WAL tail (storage/tail.py) keeps about ``max_bytes`` of
payload, whatever the record size: bulk batches of megabytes once made it keep
every record (issue 12: ~0.3 GB more heap after a 100K bulk load)."""

from __future__ import annotations

import tracemalloc

from sutra_cluster.storage.tail import RECORD_OVERHEAD, WalTail


def test_large_records_are_released_past_the_budget() -> None:
    budget, size = 8 << 20, 1 << 20
    tail = WalTail(max_bytes=budget)
    tracemalloc.start()
    try:
        for lsn in range(1, 201):  # 200 MB appended, a 1 MB payload each
            tail.append(lsn, 1, 1, bytes(size))
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held <= budget * 4 // 3 + 2 * size, f"{held / 1e6:.1f} MB held for an {budget >> 20} MB budget"


def test_reads_see_exactly_the_records_kept() -> None:
    size = 1000
    tail = WalTail(max_bytes=10 * (size + RECORD_OVERHEAD))
    for lsn in range(1, 101):
        tail.append(lsn, 1, 1, bytes(size))
    assert tail.after(89, 100, 1 << 30, 100) is None  # LSN 90 was dropped (10 records fit)
    got = tail.after(90, 100, 1 << 30, 100)
    assert got is not None and [e.lsn for e in got] == list(range(91, 101))
    assert tail.oldest() == (90 * (size + RECORD_OVERHEAD), got[0].at)
    assert tail.position(95) == (95 * (size + RECORD_OVERHEAD), got[5].at)
    assert tail.position(100) is None and tail.total == 100 * (size + RECORD_OVERHEAD)
