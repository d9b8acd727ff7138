"""Where and how a client connects: the URL form and TLS / mutual TLS.

URLs (as ``redis://`` or Qdrant's ``url=``)::

    sutra://host:port                       one node, or a router
    sutra://h1:p1,h2:p2,h3:p3               the members of one replication group:
                                            writes follow its leader (found by asking them)
    sutra+etcd://e1:2379,e2:2379/mycluster  a cluster found through etcd (the path is the
                                            cluster name, default "sutra"): writes follow
                                            each shard's leader, a sharded cluster is routed
                                            by the client itself

Query parameters: ``tls=true`` (verify with the system's roots unless ``ca``
is given), ``ca=PATH``, ``cert=PATH`` and ``key=PATH`` (mutual TLS; either
one implies ``tls``), ``server_name=NAME`` (the name to verify when it is not
the host's), ``timeout=SECONDS``, ``read_preference=leader|replica``,
``shard=N`` (etcd only: talk to that one shard's leader). Unknown parameters
are refused, so a typo does not silently connect without TLS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import grpc

from sutra_cluster.errors import ConfigError

SCHEMES = ("sutra", "sutra+etcd")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}
_PARAMS = {"tls", "ca", "cert", "key", "server_name", "timeout", "read_preference", "shard"}


@dataclass(frozen=True)
class Target:
    """A parsed URL: ``addresses`` are nodes/routers, or etcd endpoints when ``etcd``."""

    addresses: tuple[str, ...]
    etcd: bool = False
    cluster: str = "sutra"
    tls: bool = False
    ca: str = ""
    cert: str = ""
    key: str = ""
    server_name: str = ""
    timeout: float | None = None
    read_preference: str | None = None
    shard: int | None = None
    extra: dict[str, str] = field(default_factory=dict)


def _flag(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(f"URL parameter {name}={value!r}: use true or false")


def parse_url(url: str) -> Target:
    """Parse a ``sutra://`` or ``sutra+etcd://`` URL; raises ConfigError naming
    the part that is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ConfigError(f"URL {url!r}: the scheme must be one of {', '.join(s + '://' for s in SCHEMES)}")
    hosts = tuple(h.strip() for h in unquote(parts.netloc).split(",") if h.strip())
    if not hosts:
        raise ConfigError(f"URL {url!r}: no host:port")
    for h in hosts:
        host, sep, port = h.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"URL {url!r}: {h!r} is not host:port")
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    unknown = sorted(set(query) - _PARAMS)
    if unknown:
        raise ConfigError(f"URL {url!r}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(_PARAMS))}")
    q = {k: v[-1] for k, v in query.items()}
    etcd = parts.scheme == "sutra+etcd"
    cluster = parts.path.strip("/") or "sutra"
    if parts.path.strip("/") and not etcd:
        raise ConfigError(f"URL {url!r}: a path (cluster name) is for sutra+etcd:// only")
    if "shard" in q and not etcd:
        raise ConfigError(f"URL {url!r}: shard= is for sutra+etcd:// only")
    try:
        timeout = float(q["timeout"]) if "timeout" in q else None
        shard = int(q["shard"]) if "shard" in q else None
    except ValueError as exc:
        raise ConfigError(f"URL {url!r}: {exc}") from None
    ca, cert, key = q.get("ca", ""), q.get("cert", ""), q.get("key", "")
    tls = _flag("tls", q["tls"]) if "tls" in q else bool(ca or cert)
    if (ca or cert or key) and not tls:
        raise ConfigError(f"URL {url!r}: ca/cert/key given with tls=false")
    return Target(addresses=hosts, etcd=etcd, cluster=cluster, tls=tls, ca=ca, cert=cert, key=key,
                  server_name=q.get("server_name", ""), timeout=timeout,
                  read_preference=q.get("read_preference"), shard=shard)


def _bytes(what: str, value: str | bytes | Path | None) -> bytes | None:
    if value is None or value == "":
        return None
    if isinstance(value, bytes):
        return value
    try:
        return Path(value).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what}={str(value)!r}: cannot read it ({exc.strerror})") from None


def tls_credentials(*, ca: str | bytes | Path | None = None, cert: str | bytes | Path | None = None,
                    key: str | bytes | Path | None = None) -> grpc.ChannelCredentials:
    """TLS channel credentials: ``ca`` (PEM path or bytes; None: the system's
    roots) verifies the server; ``cert`` + ``key`` are the client's own
    certificate for mutual TLS (a node with SUTRA_TLS_CA refuses calls without
    one). Raises ConfigError naming the option when a file cannot be read or
    only one of cert/key is given."""
    if (cert is None or cert == "") != (key is None or key == ""):
        raise ConfigError("client_cert/client_key: give both for mutual TLS, or neither")
    return grpc.ssl_channel_credentials(root_certificates=_bytes("ca_cert", ca),
                                        private_key=_bytes("client_key", key),
                                        certificate_chain=_bytes("client_cert", cert))


def channel_options(max_message_bytes: int, server_name: str = "") -> list[tuple[str, Any]]:
    # Short reconnect backoff: a node that comes back (say, after a failover
    # back to it) is reached at once, not after gRPC's default of up to 2 min.
    opts: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", max_message_bytes), ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
        ("grpc.max_reconnect_backoff_ms", 500)]
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    return opts
