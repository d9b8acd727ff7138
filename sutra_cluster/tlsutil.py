"""TLS for clients and between nodes.

- ``SUTRA_TLS_CERT`` + ``SUTRA_TLS_KEY``: the node serves TLS; clients verify it.
- ``SUTRA_TLS_CA`` as well: mutual TLS. Every peer must present a certificate
  signed by the cluster's CA, so a process without one can call nothing; the
  role in the certificate (``spiffe://sutra/<role>/<name>``) then decides whether
  it may stream the WAL or call Promote (see ``sutra_cluster.auth``).
Nodes connect to each other with their own certificate and trust the CA (or,
without a CA, their own certificate, as with the guide's self-signed one).

Channels made here also carry the cluster secret (SUTRA_CLUSTER_SECRET) and the
caller's node id as call metadata, so a node without mutual TLS can prove it
belongs to the cluster (see ``sutra_cluster.auth``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc

from sutra_cluster.auth import with_identity
from sutra_cluster.config import Config
from sutra_cluster.credentials import cluster_secret
from sutra_cluster.errors import ConfigError


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def server_credentials(cfg: Config) -> grpc.ServerCredentials | None:
    if not cfg.tls_cert:
        return None
    pair = (_read(cfg.tls_key), _read(cfg.tls_cert))
    if cfg.tls_ca:
        return grpc.ssl_server_credentials([pair], root_certificates=_read(cfg.tls_ca), require_client_auth=True)
    return grpc.ssl_server_credentials([pair])


def peer_credentials(cert: str, key: str, ca: str) -> grpc.ChannelCredentials | None:
    """Credentials for a node (or an admin tool) calling another node."""
    if not cert and not ca:
        return None
    roots = _read(ca) if ca else _read(cert)
    if cert and key:
        return grpc.ssl_channel_credentials(root_certificates=roots, private_key=_read(key),
                                            certificate_chain=_read(cert))
    return grpc.ssl_channel_credentials(root_certificates=roots)


def channel_factory(cfg: Config):  # type: ignore[no-untyped-def]
    """A function address -> channel using the node's TLS settings.

    Messages between nodes carry whole WAL records (up to SUTRA_MAX_MESSAGE_BYTES
    each, batched up to 4 MiB), so the receive limit is raised to match what the
    sending node allows; gRPC's default of 4 MiB would break the stream."""
    creds = peer_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_ca)
    limit = min(2 * cfg.max_message_bytes + (8 << 20), (1 << 31) - 1)
    opts = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]

    def make(address: str) -> grpc.Channel:
        if creds is not None:
            ch = grpc.secure_channel(address, creds, options=opts)
        else:
            ch = grpc.insecure_channel(address, options=opts)
        return with_identity(ch, cfg.cluster_secret, cfg.node_id)

    return make


def env_channel(address: str, env: Mapping[str, str] | None = None,
                options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
    """A channel for command-line tools, from SUTRA_TLS_* and the cluster secret
    (SUTRA_CLUSTER_SECRET or SUTRA_CLUSTER_SECRET_FILE) in the environment.
    Raises ConfigError naming the setting when the secret cannot be read."""
    e = os.environ if env is None else env
    try:
        secret = cluster_secret(e)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    creds = peer_credentials(e.get("SUTRA_TLS_CERT", ""), e.get("SUTRA_TLS_KEY", ""), e.get("SUTRA_TLS_CA", ""))
    ch = grpc.secure_channel(address, creds, options=options) if creds is not None else grpc.insecure_channel(
        address, options=options)
    return with_identity(ch, secret)
