"""The records message a feeder sends, built in place, is byte for byte the
nested form it replaced."""

from __future__ import annotations

from sutra_cluster.pb import replication_pb2 as rpb
from sutra_cluster.replication.leader import records_message
from sutra_cluster.storage.tail import Entry


def test_records_message_is_the_nested_form_byte_for_byte() -> None:
    head = {"term": 7, "leader_id": "n1", "leader_address": "127.0.0.1:1", "cluster_uuid": "u" * 36}
    entries = [Entry(41, 6, 2, b"", 0.0, 32), Entry(42, 7, 1, bytes(range(256)) * 40, 0.0, 10_000),
               Entry(43, 7, 1, b"x", 0.0, 10_033)]
    for commit in (0, 42):
        for some in (entries[:1], entries):
            nested = rpb.LeaderMessage(**head, records=rpb.Records(entries=[
                rpb.WalEntry(lsn=e.lsn, term=e.term, rtype=e.rtype, payload=e.payload) for e in some],
                commit_lsn=commit))
            built = records_message(head, some, commit)
            assert built.WhichOneof("kind") == "records"
            assert built.SerializeToString() == nested.SerializeToString()
