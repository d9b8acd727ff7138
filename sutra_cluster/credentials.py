"""Secrets and credentials from the environment: the cluster secret that
authenticates nodes and admin tools (see ``sutra_cluster.auth``) and the
options that secure the connection to etcd.

Both the node (through ``config.load``) and the command-line tools read them
here, so a tool started with the node's environment file speaks the same way.
Errors name the setting and never echo a secret.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

MIN_SECRET_CHARS = 16


def cluster_secret(env: Mapping[str, str] | None = None, errors: list[str] | None = None) -> str:
    """The cluster secret from ``SUTRA_CLUSTER_SECRET`` or the file named by
    ``SUTRA_CLUSTER_SECRET_FILE`` (surrounding whitespace dropped), or "" when
    neither is set. Raises ValueError naming the setting when both are set, the
    file cannot be read, or the secret is shorter than MIN_SECRET_CHARS; with
    ``errors`` given, appends the message there instead and returns ""."""
    if errors is not None:
        try:
            return cluster_secret(env)
        except ValueError as exc:
            errors.append(str(exc))
            return ""
    e = os.environ if env is None else env
    value = e.get("SUTRA_CLUSTER_SECRET", "").strip()
    path = e.get("SUTRA_CLUSTER_SECRET_FILE", "").strip()
    name = "SUTRA_CLUSTER_SECRET"
    if value and path:
        raise ValueError("SUTRA_CLUSTER_SECRET and SUTRA_CLUSTER_SECRET_FILE: set one, not both")
    if path:
        name = f"SUTRA_CLUSTER_SECRET_FILE={path!r}"
        try:
            value = Path(path).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{name}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
        if not value:
            raise ValueError(f"{name}: the file is empty")
    if value and len(value) < MIN_SECRET_CHARS:
        raise ValueError(f"{name}: the secret has {len(value)} characters; at least {MIN_SECRET_CHARS} are needed "
                         "(`openssl rand -hex 32` makes one)")
    return value


@dataclass(frozen=True)
class EtcdSecurity:
    """How to reach etcd: TLS (``cacert``, plus ``cert``/``key`` for etcd's
    client-certificate auth) and etcd's user/password auth."""

    cacert: str = ""  # SUTRA_ETCD_CACERT
    cert: str = ""  # SUTRA_ETCD_CERT
    key: str = ""  # SUTRA_ETCD_KEY
    user: str = ""  # SUTRA_ETCD_USER
    password: str = field(default="", repr=False)  # SUTRA_ETCD_PASSWORD

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EtcdSecurity:
        e = os.environ if env is None else env
        return cls(cacert=e.get("SUTRA_ETCD_CACERT", "").strip(), cert=e.get("SUTRA_ETCD_CERT", "").strip(),
                   key=e.get("SUTRA_ETCD_KEY", "").strip(), user=e.get("SUTRA_ETCD_USER", "").strip(),
                   password=e.get("SUTRA_ETCD_PASSWORD", ""))

    def problems(self) -> list[str]:
        """One line per inconsistent or missing setting (empty when usable)."""
        out = []
        if bool(self.cert) != bool(self.key):
            out.append("SUTRA_ETCD_CERT/SUTRA_ETCD_KEY: set both or neither")
        if self.cert and not self.cacert:
            out.append("SUTRA_ETCD_CACERT: needed with SUTRA_ETCD_CERT (the CA that signed etcd's certificate)")
        if bool(self.user) != bool(self.password):
            out.append("SUTRA_ETCD_USER/SUTRA_ETCD_PASSWORD: set both or neither")
        for name, path in (("SUTRA_ETCD_CACERT", self.cacert), ("SUTRA_ETCD_CERT", self.cert),
                           ("SUTRA_ETCD_KEY", self.key)):
            if path and not os.path.isfile(path):
                out.append(f"{name}={path!r}: no such file")
        return out

    @property
    def tls(self) -> bool:
        return bool(self.cacert)

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials for etcd's client port, or None for plaintext."""
        if not self.cacert:
            return None
        key = Path(self.key).read_bytes() if self.key else None
        cert = Path(self.cert).read_bytes() if self.cert else None
        return grpc.ssl_channel_credentials(Path(self.cacert).read_bytes(), key, cert)
