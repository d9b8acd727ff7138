"""Failover: etcd-held leadership. The only package that imports the etcd client.

- ``decide``: the pure decision, snapshot + node state -> one action and a sentence.
- ``loop``: the thin HA loop applying it; talks to the node through ``port``.
- ``port``: NodePort, the node as the loop sees it.
- ``coordinator``: the contract over the consensus store; ``etcd`` implements it,
  ``memory`` in memory for tests and the simulator.
- ``keys``: the etcd key layout and the values stored there.
- ``discovery``: ShardWatch, the one leader discovery for clients and routers.
"""
