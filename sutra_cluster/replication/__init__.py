"""Replication: the node's role and WAL streaming between the nodes of a shard.

- ``manager``: ReplicationManager, the role and its only transitions (``lead``,
  ``step_down``, ``follow``); implements storage's ReplicationHooks and the HA
  loop's NodePort.
- ``commit``: SyncCommit, the pure rule for what a leader may acknowledge and who
  may join the sync set (the simulator runs it too).
- ``leader``: feeding replicas, acknowledgements, the divergence check.
- ``follower``: the replica's stream, divergent-tail cuts and snapshot bootstraps.
- ``service``: the ReplicationService servicer.
"""
