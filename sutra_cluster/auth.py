"""Who may call what on a node's port: the client, node and admin planes.

Every gRPC method belongs to one plane:

- **client plane**: ``sutra.storage.StorageService/*``, ``grpc.health.v1.Health``
  and server reflection. Open to anyone the transport admits (with mutual TLS,
  any certificate from the cluster's CA).
- **node plane**: ``StreamWal`` (role node), ``GetSnapshot`` (node, or admin for
  backups) and ``GetReplicationStatus`` (node or admin). GetReplicationStatus
  changes nothing, but it names the sync-set members and every replica's
  address, which is what an impersonation attack needs first; PostgreSQL keeps
  the same columns of ``pg_stat_replication`` from unprivileged roles.
- **admin plane**: ``Promote``, ``Follow`` and ``Reinit`` (role admin), and any method this
  module does not know: a new RPC is closed until someone classifies it.

The caller's identity comes from one of three modes, fixed at start:

- **mtls** (``SUTRA_TLS_CA`` set): the role is in the peer certificate's SAN URI
  ``spiffe://sutra/<role>/<name>`` with role node, admin or client. A CA-signed
  certificate without such a URI is a client. ``sutra-cluster certs`` makes them.
- **secret** (``SUTRA_CLUSTER_SECRET`` or ``..._FILE``, no CA): nodes and admin
  tools send the secret in the ``sutra-cluster-secret`` metadata; it is compared
  in constant time. One shared secret cannot tell a node from an admin tool, so
  its holders have both roles (as Redis's ``masterauth``/``requirepass``).
- **protected** (neither): node- and admin-plane calls only from loopback peers,
  as Redis's protected mode; one WARNING line at start says so.

Refusals answer UNAUTHENTICATED (no or a wrong credential) or PERMISSION_DENIED
(a credential without the role, or a non-loopback peer in protected mode), and
name what is missing. ``peer_identity(context)`` tells servicer code who the
caller of a node- or admin-plane call is.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

log = logging.getLogger(__name__)

NODE, ADMIN, CLIENT, ANONYMOUS_ROLE = "node", "admin", "client", "anonymous"
ROLES = (NODE, ADMIN, CLIENT)
SECRET_HEADER = "sutra-cluster-secret"
NODE_ID_HEADER = "sutra-node-id"
URI_PREFIX = "spiffe://sutra/"

_REPLICATION = "/sutra.replication.ReplicationService/"
# Roles allowed per node- or admin-plane method; a method not listed and not in
# a client-plane service needs ADMIN (closed by default).
NODE_PLANE: dict[str, frozenset[str]] = {
    _REPLICATION + "StreamWal": frozenset({NODE}),
    _REPLICATION + "GetSnapshot": frozenset({NODE, ADMIN}),
    _REPLICATION + "GetReplicationStatus": frozenset({NODE, ADMIN}),
}
ADMIN_PLANE: dict[str, frozenset[str]] = {
    _REPLICATION + "Promote": frozenset({ADMIN}),
    _REPLICATION + "Follow": frozenset({ADMIN}),
    _REPLICATION + "Reinit": frozenset({ADMIN}),
}
CLIENT_SERVICES = (
    "/sutra.storage.StorageService/",
    # Cross-shard writes (proto/txn.proto): routers call it with client credentials,
    # and it gives no power LearnBatch on the same leader does not.
    "/sutra.txn.TxnService/",
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
_DEFAULT_ROLES = frozenset({ADMIN})


def required_roles(method: str) -> frozenset[str] | None:
    """Roles that may call ``method`` (``/package.Service/Method``), or None for
    a client-plane method anyone the transport admits may call."""
    if method.startswith(CLIENT_SERVICES):
        return None
    return NODE_PLANE.get(method) or ADMIN_PLANE.get(method) or _DEFAULT_ROLES


def plane(method: str) -> str:
    """The plane ``method`` belongs to: "client", "node" or "admin"."""
    if required_roles(method) is None:
        return "client"
    return "node" if method in NODE_PLANE else "admin"


@dataclass(frozen=True)
class Identity:
    """Who called. ``role`` is node, admin, client or anonymous; ``name`` the
    certificate's name (mtls), else the ``sutra-node-id`` the caller claims;
    ``via`` how it was established: certificate, secret, loopback or none."""

    role: str
    name: str
    via: str

    @property
    def roles(self) -> frozenset[str]:
        """The roles this identity acts in. A secret or a loopback peer is
        trusted as a node and as an admin tool (they cannot be told apart)."""
        if self.via in ("secret", "loopback"):
            return frozenset({NODE, ADMIN})
        return frozenset({self.role}) if self.role in ROLES else frozenset()


ANONYMOUS = Identity(ANONYMOUS_ROLE, "", "none")


def is_loopback_peer(peer: str) -> bool:
    """True for a gRPC peer string on this machine's loopback (``ipv4:127.x.y.z:port``,
    ``ipv6:[::1]:port``, an IPv4-mapped loopback, or a unix socket); False for
    anything else, including strings this function cannot parse."""
    peer = urllib.parse.unquote(peer or "")
    kind, _, rest = peer.partition(":")
    if kind in ("unix", "unix-abstract"):
        return True
    if kind == "ipv4":
        host = rest.rpartition(":")[0]
    elif kind == "ipv6":
        if not rest.startswith("["):
            return False
        host = rest[1:].partition("]")[0]
    else:
        return False
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def role_from_uris(uris: Sequence[bytes | str]) -> tuple[str, str] | None:
    """(role, name) from the first SAN URI ``spiffe://sutra/<role>/<name>`` whose
    role is node, admin or client; None when there is none."""
    for raw in uris:
        uri = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        if not uri.startswith(URI_PREFIX):
            continue
        role, _, name = uri[len(URI_PREFIX):].partition("/")
        if role in ROLES and name:
            return role, name
    return None


def _first(auth: Mapping[str, Sequence[bytes]], key: str) -> str:
    vals = auth.get(key) or []
    return vals[0].decode(errors="replace") if vals else ""


class Policy:
    """The node's authentication mode and the checks made on every node- and
    admin-plane call. ``mode`` is "mtls", "secret" or "protected"."""

    def __init__(self, *, mtls: bool, secret: str = "") -> None:
        self.mode = "mtls" if mtls else "secret" if secret else "protected"
        self._secret = secret.encode()
        self._last_log = 0.0
        self._suppressed = 0
        self._log_lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: Any) -> Policy:
        """From a Config: mutual TLS when SUTRA_TLS_CA is set (with a cert), else
        the cluster secret, else protected mode."""
        return cls(mtls=bool(cfg.tls_ca and cfg.tls_cert), secret=cfg.cluster_secret)

    def describe(self) -> str:
        """One line for the start-up log."""
        if self.mode == "mtls":
            return ("node/admin calls need a certificate with role node or admin "
                    f"(SAN URI {URI_PREFIX}<role>/<name>); SUTRA_CLUSTER_SECRET is not checked under mutual TLS")
        if self.mode == "secret":
            return f"node/admin calls need the cluster secret in the '{SECRET_HEADER}' metadata"
        return ("PROTECTED MODE: neither SUTRA_CLUSTER_SECRET nor SUTRA_TLS_CA is set, so replication and admin "
                "calls (StreamWal, GetSnapshot, Promote, Follow, Reinit, GetReplicationStatus) are refused from anything "
                "but loopback; set SUTRA_CLUSTER_SECRET (or mutual TLS) on every node to replicate across hosts")

    def identify(self, metadata: Sequence[tuple[str, Any]], peer: str,
                 auth_context: Mapping[str, Sequence[bytes]]) -> Identity:
        """The caller's identity under this policy (ANONYMOUS when it has none)."""
        claimed = ""
        offered = None
        for key, value in metadata or ():
            if key == NODE_ID_HEADER:
                claimed = str(value)
            elif key == SECRET_HEADER:
                offered = value.encode() if isinstance(value, str) else bytes(value)
        if self.mode == "mtls":
            found = role_from_uris(auth_context.get("peer_uri") or auth_context.get("x509_subject_alternative_name")
                                   or [])
            if found is not None:
                return Identity(found[0], found[1], "certificate")
            cn = _first(auth_context, "x509_common_name")
            return Identity(CLIENT, cn, "certificate") if cn or auth_context.get("x509_pem_cert") else ANONYMOUS
        if self.mode == "secret":
            if offered is not None and hmac.compare_digest(offered, self._secret):
                return Identity(NODE, claimed, "secret")
            return ANONYMOUS
        return Identity(NODE, claimed, "loopback") if is_loopback_peer(peer) else ANONYMOUS

    def refusal(self, method: str, need: frozenset[str], ident: Identity, peer: str,
                secret_offered: bool) -> tuple[grpc.StatusCode, str] | None:
        """None when ``ident`` may call ``method``; else the status and a message
        that names what was missing (never the secret)."""
        if ident.roles & need:
            return None
        what = f"{method.lstrip('/')} is a {plane(method)}-plane call (role {' or '.join(sorted(need))})"
        if self.mode == "mtls":
            got = f"role {ident.role}" + (f" ({ident.name})" if ident.name else "")
            return (grpc.StatusCode.PERMISSION_DENIED,
                    f"{what}: the caller's certificate has {got}; it needs SAN URI "
                    f"{URI_PREFIX}{sorted(need)[0]}/<name> from the cluster's CA (see `sutra-cluster certs`)")
        if self.mode == "secret":
            why = ("the '%s' metadata does not match this node's cluster secret" % SECRET_HEADER if secret_offered
                   else "send the cluster secret in the '%s' metadata (SUTRA_CLUSTER_SECRET or "
                        "SUTRA_CLUSTER_SECRET_FILE on the calling side)" % SECRET_HEADER)
            return grpc.StatusCode.UNAUTHENTICATED, f"{what}: {why}"
        return (grpc.StatusCode.PERMISSION_DENIED,
                f"{what}: this node is in protected mode (neither SUTRA_CLUSTER_SECRET nor SUTRA_TLS_CA is set), "
                f"so it takes these calls only from loopback, and the caller is {peer}")

    def note_refusal(self, message: str) -> None:
        """Log refusals at most once per 10 s, so a scan cannot flood the log."""
        with self._log_lock:
            now = time.monotonic()
            if now - self._last_log < 10.0:
                self._suppressed += 1
                return
            more, self._suppressed, self._last_log = self._suppressed, 0, now
        log.warning("refused: %s%s", message, f" (and {more} more refusals in the last 10 s)" if more else "")


_ATTR = "_sutra_identity"


def peer_identity(context: grpc.ServicerContext) -> Identity:
    """The authenticated caller of the current node- or admin-plane call (set by
    AuthInterceptor before the servicer runs); ANONYMOUS for client-plane calls
    or servers without the interceptor. With mtls the name is the certificate's;
    with a secret or on loopback it is the ``sutra-node-id`` the caller claims,
    which every holder of the secret is trusted to state truthfully."""
    ident = getattr(context, _ATTR, None)
    return ident if isinstance(ident, Identity) else ANONYMOUS


class AuthInterceptor(grpc.ServerInterceptor):
    """Checks the caller of every node- and admin-plane call against ``policy``.
    Client-plane handlers are returned untouched (no per-call cost)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
                          handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        need = required_roles(method)
        if handler is None or need is None:
            return handler
        metadata = tuple(handler_call_details.invocation_metadata or ())
        policy = self.policy

        def admit(context: grpc.ServicerContext) -> None:
            peer = context.peer()
            ident = policy.identify(metadata, peer, context.auth_context())
            refused = policy.refusal(method, need, ident, peer, any(k == SECRET_HEADER for k, _ in metadata))
            if refused is not None:
                policy.note_refusal(refused[1] if peer in refused[1] else f"{refused[1]} (peer {peer})")
                _abort(context, *refused)
            setattr(context, _ATTR, ident)

        return _guard(handler, admit)


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def _guard(handler: grpc.RpcMethodHandler, admit: Callable[[grpc.ServicerContext], None]) -> grpc.RpcMethodHandler:
    """``handler`` with ``admit(context)`` run before its behaviour."""

    def wrap(behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            admit(context)
            return behavior(request, context)

        return guarded

    ser = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), **ser)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), **ser)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), **ser)
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), **ser)


def server_interceptors(cfg: Any) -> list[grpc.ServerInterceptor]:
    """The interceptors a node's (or router's) gRPC server is built with; logs the
    mode once (a WARNING in protected mode, which Redis also announces)."""
    policy = Policy.from_config(cfg)
    if policy.mode == "protected":
        log.warning("%s", policy.describe())
    else:
        log.info("authentication: %s; %s", policy.mode, policy.describe())
    return [AuthInterceptor(policy)]


# ---- the calling side -----------------------------------------------------------------------------------
class _ClientCallDetails(grpc.ClientCallDetails):
    def __init__(self, base: grpc.ClientCallDetails, metadata: list[tuple[str, str]]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


class IdentityMetadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                       grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds the cluster secret and this caller's node id to every call of a
    channel (what nodes and admin tools send to other nodes)."""

    def __init__(self, secret: str, node_id: str = "") -> None:
        self.extra = [(SECRET_HEADER, secret)] + ([(NODE_ID_HEADER, node_id)] if node_id else [])

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _ClientCallDetails(details, [*(details.metadata or ()), *self.extra])

    def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]
        return continuation(self._details(client_call_details), request_iterator)


def with_identity(channel: grpc.Channel, secret: str, node_id: str = "") -> grpc.Channel:
    """``channel`` sending the cluster secret (and node id) with every call; the
    channel itself when there is no secret."""
    if not secret:
        return channel
    return grpc.intercept_channel(channel, IdentityMetadata(secret, node_id))
