"""``sutra-cluster certs``: a cluster CA and certificates with roles, after
CockroachDB's ``cockroach cert``.

Every leaf certificate carries its role and name in a SAN URI,
``spiffe://sutra/<role>/<name>`` (role node, admin or client), which is what
``sutra_cluster.auth`` reads from the peer certificate. A node's certificate
also lists the DNS names and IP addresses others reach it at, so gRPC and
grpcurl verify it; its name should be the node's SUTRA_NODE_ID, because the
replication code ties a stream's node id to the certificate's name.

Layout of the certificate folder (keys are written 0600):

- ``ca.crt``, ``ca.key``: the CA (move ``ca.key`` offline once the certificates
  exist; it is needed only to make more);
- ``node.<name>.crt`` / ``.key``: SUTRA_TLS_CERT / SUTRA_TLS_KEY of a node;
- ``admin.<name>.crt`` / ``.key``: for ``sutra-cluster promote|follow|status|backup``;
- ``client.<name>.crt`` / ``.key``: for applications and routers (client plane only).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sutra_cluster.auth import ROLES, URI_PREFIX, role_from_uris

CA_DAYS = 3650
LEAF_DAYS = 730
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class CertError(ValueError):
    """A certificate cannot be made as asked; the message says why."""


@dataclass(frozen=True)
class Made:
    """One certificate written: its files and what it says."""

    cert: Path
    key: Path
    role: str
    name: str
    hosts: tuple[str, ...]
    not_after: datetime.datetime


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    # Created 0600 from the start: a key must never be readable by others, even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def create_ca(certs_dir: Path, days: int = CA_DAYS, overwrite: bool = False) -> Made:
    """Write ``ca.crt`` and ``ca.key`` in ``certs_dir``. An existing CA is kept
    (returned as is) unless ``overwrite``: replacing it would orphan every
    certificate it signed."""
    certs_dir.mkdir(parents=True, exist_ok=True)
    crt, keyp = certs_dir / "ca.crt", certs_dir / "ca.key"
    if crt.exists() and keyp.exists() and not overwrite:
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        return Made(crt, keyp, "ca", "", (), cert.not_valid_after_utc)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sutra Cluster"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "Sutra Cluster CA")])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write_key(keyp, key)
    _write_cert(crt, cert)
    return Made(crt, keyp, "ca", "", (), cert.not_valid_after_utc)


def _load_ca(certs_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    crt, keyp = certs_dir / "ca.crt", certs_dir / "ca.key"
    if not crt.exists() or not keyp.exists():
        raise CertError(f"no CA in {certs_dir} (ca.crt and ca.key): run `sutra-cluster certs create-ca` first")
    key = serialization.load_pem_private_key(keyp.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{keyp}: not an EC private key")
    return x509.load_pem_x509_certificate(crt.read_bytes()), key


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def create_cert(certs_dir: Path, role: str, name: str, hosts: tuple[str, ...] | list[str] = (),
                days: int = LEAF_DAYS) -> Made:
    """Write ``<role>.<name>.crt`` and ``.key``, signed by the CA in ``certs_dir``.
    ``hosts`` (DNS names or IPs) go into the SAN so TLS clients accept the
    certificate from a server at those names; a node without hosts gets
    localhost and 127.0.0.1. Raises CertError for a bad role, name or host."""
    if role not in ROLES:
        raise CertError(f"role {role!r}: must be one of {', '.join(ROLES)}")
    if not _NAME.match(name):
        raise CertError(f"name {name!r}: letters, digits, '.', '_' and '-' only, at most 63 characters")
    hosts = tuple(h.strip() for h in hosts if h.strip())
    if role == "node" and not hosts:
        hosts = ("localhost", "127.0.0.1")
    for h in hosts:
        if not re.match(r"^[A-Za-z0-9*.:_-]+$", h):
            raise CertError(f"host {h!r}: not a DNS name or an IP address")
    ca, ca_key = _load_ca(certs_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    uri = f"{URI_PREFIX}{role}/{name}"
    # The role is in the SAN URI (what auth reads); OU repeats it for people reading `openssl x509 -text`.
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sutra Cluster"),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    not_after = min(now + datetime.timedelta(days=days), ca.not_valid_after_utc)
    # Every leaf may serve and call: nodes do both, and so does a router with a client certificate.
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri),
                                                        *(_san(h) for h in hosts)]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    base = certs_dir / f"{role}.{name}"
    crt, keyp = base.with_name(base.name + ".crt"), base.with_name(base.name + ".key")
    _write_key(keyp, key)
    _write_cert(crt, cert)
    return Made(crt, keyp, role, name, hosts, not_after)


def cert_info(path: Path) -> dict[str, object]:
    """A certificate file's file name, role, name, SAN hosts and expiry (``certs list -o json``)."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    found = role_from_uris(san.get_values_for_type(x509.UniformResourceIdentifier))
    hosts = [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]
    role, name = found if found else ("ca" if path.name == "ca.crt" else "client (no role URI)", "")
    return {"file": path.name, "role": role, "name": name, "hosts": hosts,
            "expires": f"{cert.not_valid_after_utc:%Y-%m-%d}"}


def describe(path: Path) -> str:
    """One line about a certificate file: role, name, SAN hosts, expiry."""
    i = cert_info(path)
    hosts = ",".join(i["hosts"]) or "-"  # type: ignore[arg-type]
    return f"{i['file']!s:<28} role {i['role']!s:<7} {i['name']!s:<16} hosts {hosts:<30} expires {i['expires']}"


def list_certs(certs_dir: Path) -> list[str]:
    return [describe(p) for p in sorted(certs_dir.glob("*.crt"))]
