"""Storage: one node's data. Imports nothing above it (.importlinter).

- ``engine``: the Engine: write path, apply/reconcile, checkpoints, reads; its role
  changes only through ``lead`` / ``step_down``; asks replication through
  ``ReplicationHooks``.
- ``history``: what comes from or serves other nodes: replicated appends, terms,
  snapshot installs, divergent-tail cuts.
- ``batch``: what a logged batch is; request-id bookkeeping.
- ``state``: the in-memory graph. ``vectors``: the faiss index.
- ``wal_format`` (constants, codecs, record types), ``wal_reader`` (touches no
  file), ``wal`` (the opener and writer: repair is its decision), ``wal_segments``
  (file changes), ``fsio`` (the durable write recipe), ``tail`` (the WAL's
  in-memory tail).
- ``checkpoint``: storage.dat. ``terms``: terms.json, the term history.
"""
