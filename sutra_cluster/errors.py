"""The project's error tree. Each class maps to one gRPC status code in
``sutra_cluster.api.status``; nothing else decides status codes."""

from __future__ import annotations


class SutraError(Exception):
    """Base of every error this project raises on purpose.

    ``reason``: a machine-readable word sent beside the status code (trailing
    metadata ``sutra-reason``, see ``sutra_cluster.retry``), so that callers decide
    what to do without reading the message. Empty: the code says it all."""

    reason = ""


class ConfigError(SutraError):
    """One or more settings are invalid; the message has one line per bad setting."""


class InvalidArgument(SutraError):
    """The request is malformed; the message names the field and the limit. Nothing was written."""


class NotFound(SutraError):
    """The named object does not exist."""


class FailedPrecondition(SutraError):
    """The node cannot take this request in its current state (for example a write sent to a replica)."""


class Unavailable(SutraError):
    """The write was not acknowledged and may be retried (disk full, too few replicas, shutting down)."""


class DeadlineExceeded(SutraError):
    """A read waited for a sequence that did not become visible in time."""


class StorageFailure(SutraError):
    """The node's own storage failed in a way a restart is needed to clear (for example fsync failure)."""


class ResourceExhausted(SutraError):
    """A per-request or per-client bound was reached (streams, waits, path visits,
    neighbours); the message names the setting and its value. Nothing was written."""


class AlreadyExists(SutraError):
    """A write reused a request id with a different payload: the first write with
    that id stands, the new one was not applied."""


class StartupError(SutraError):
    """The node cannot start; the message names the file or the setting to fix."""


class NotLeader(FailedPrecondition):
    """A write reached a replica; the message names the leader. Find it and retry."""

    reason = "not-leader"


class NoLeader(Unavailable):
    """This node knows no leader (an election or an etcd outage is under way)."""

    reason = "no-leader"


class NotVisible(DeadlineExceeded):
    """A read's ``sequence`` did not become visible on this node in time."""

    reason = "not-visible"


class WrongShard(FailedPrecondition):
    """The concept belongs to another shard; the message names it. Retrying here never helps."""

    reason = "wrong-shard"
