"""A deterministic simulator of one shard's HA protocol (issue 10, "Prove it").

The real decision code runs unchanged: ``HaLoop`` (ticked, never threaded) and
its pure ``decide()``, ``MemoryCoordinator`` on a ``MemoryStore`` with the
simulated clock, ``SyncCommit`` as each leader's commit rule, and the leader's
``divergence`` rule over the real ``TermHistory``. Simulated are the data plane (``node.py``), time and the
network (``world.py``, ``streams.py``), the faults (``nemesis.py``), the
invariants (``checker.py``) and the search and shrinker (``run.py``).
"""
