"""The gRPC boundary of a node.

- ``storage_service``: the StorageService servicer.
- ``validate``: request validation and its limits (before anything is logged).
- ``status``: errors to status codes and reasons, in one table.
- ``limits``: per-client and node-plane stream budgets.
- ``wire``: raw request bytes kept beside the parsed message.
- ``shard_guard``: a node's wrong-shard check.
- ``reads``: attribute filters, multi-get, scroll and count (checks and the node's scans).
"""
