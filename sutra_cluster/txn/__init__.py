"""Cross-shard atomic writes: two-phase commit with presumed abort, the
decision one key in etcd (docs/HA.md "Cross-shard atomic writes").

- ``decision``: the durable decision record (``/<cluster>/txns/<txn id>``);
- ``coordinator``: the router's side (prepare every part, decide, commit);
- ``service``: a node's TxnService (prepare, decide, list) over ``storage.prepared``;
- ``recovery``: a node's resolver that finishes in-doubt parts from the decision.
"""
