"""``SutraClient``: the one Python client, for a node, a router, one shard's
leader through etcd, or a whole sharded cluster routed in process."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, Self

import grpc
import numpy as np

from sutra_cluster import errors
from sutra_cluster.client.calls import Call, Calls, batch_request
from sutra_cluster.client.errors import from_rpc_error
from sutra_cluster.client.options import channel_options, parse_url, tls_credentials
from sutra_cluster.client.transport import Direct, Leader, Routed, Transport
from sutra_cluster.client.types import (
    Association,
    BulkLoadResult,
    Concept,
    Digest,
    Filter,
    FlushResult,
    Health,
    Neighbor,
    Page,
    SearchHit,
    Stats,
)
from sutra_cluster.errors import ConfigError
from sutra_cluster.pb import storage_pb2 as pb

Token = Mapping[int, int]


class SutraClient(Calls):
    """A client for Sutra Cluster. Thread-safe; a context manager.

    Where it connects (``address`` may be any of these, or a URL: see
    ``sutra_cluster.client.options``):

    - ``SutraClient("host:port")``: one node, or a router.
    - ``SutraClient(["h1:p", "h2:p", "h3:p"])``: the members of one replication
      group without etcd; writes go to whichever member is the leader.
    - ``SutraClient(etcd=["e1:2379"])``: a cluster found through etcd. Writes
      follow each shard's leader across failovers (same request id, so a retried
      write applies once); a sharded cluster (a shard map in etcd) is routed by
      the client itself, as the router would. ``shard=N`` talks to that shard's
      leader only.
    - ``SutraClient.from_url("sutra+etcd://e1:2379/mycluster?tls=true&ca=ca.pem")``.

    TLS: ``tls=True`` (the system's roots), ``ca_cert=`` (PEM path or bytes),
    ``client_cert=`` + ``client_key=`` for mutual TLS, or ready-made
    ``credentials=`` (``grpc.ssl_channel_credentials``).

    Writes return their LSN (``sequence``). Reads take ``sequence=`` (an LSN of
    the node asked) and wait until it is visible; through a router or the
    routing client the client also keeps a token of its own writes per shard
    and every read waits for it (read-your-writes, from replicas too).
    ``read_preference="replica"`` reads from replicas where shards are routed.

    Errors are typed (``sutra_cluster.client.errors``): ``InvalidArgument``
    names the field and the limit, ``NotLeader``, ``WrongShard``,
    ``Unavailable``, ``NotVisible`` and the rest mirror the server's tree.
    """

    def __init__(self, address: str | Sequence[str] | None = None, *, etcd: Sequence[str] = (),
                 cluster: str = "sutra", shard: int | None = None, shard_map: Any = None,
                 read_preference: str = "leader", timeout: float = 30.0, retry_deadline: float = 10.0,
                 failover_deadline: float = 15.0, read_deadline: float | None = None,
                 credentials: grpc.ChannelCredentials | None = None, tls: bool = False,
                 ca_cert: str | bytes | None = None, client_cert: str | bytes | None = None,
                 client_key: str | bytes | None = None, server_name: str = "",
                 max_message_bytes: int = 128 << 20, watch: bool = True) -> None:
        if isinstance(address, str) and "://" in address:
            t = parse_url(address)
            if t.etcd:
                etcd, address, cluster, shard = t.addresses, None, t.cluster, t.shard if t.shard is not None else shard
            else:
                address = t.addresses[0] if len(t.addresses) == 1 else list(t.addresses)
            tls, ca_cert = tls or t.tls, ca_cert or t.ca or None
            client_cert, client_key = client_cert or t.cert or None, client_key or t.key or None
            server_name = server_name or t.server_name
            timeout = t.timeout if t.timeout is not None else timeout
            read_preference = t.read_preference or read_preference
        super().__init__(read_preference)
        if credentials is None and (tls or ca_cert or client_cert or client_key):
            credentials = tls_credentials(ca=ca_cert, cert=client_cert, key=client_key)
        self.credentials = credentials
        self.timeout = timeout
        self.retry_deadline = retry_deadline
        self.failover_deadline = failover_deadline
        self._options = channel_options(max_message_bytes, server_name)
        self._max_message_bytes = max_message_bytes
        addresses = [a.strip() for a in address.split(",")] if isinstance(address, str) else list(address or ())
        self._transport: Transport = self._connect(addresses, list(etcd), cluster, shard, shard_map,
                                                   read_deadline, watch)

    def _connect(self, addresses: list[str], etcd: list[str], cluster: str, shard: int | None, shard_map: Any,
                 read_deadline: float | None, watch: bool) -> Transport:
        if addresses and etcd:
            raise ConfigError("SutraClient: give node addresses or etcd endpoints, not both")
        if len(addresses) == 1 and shard_map is None:
            return Direct(addresses[0], self.credentials, self._options, self.timeout, self.retry_deadline)
        if etcd and shard is not None:
            return Leader(etcd, cluster, shard, self._connect_one, self.timeout, self.failover_deadline, watch)
        from sutra_cluster.sharding import shardmap
        from sutra_cluster.sharding.core import ShardSet
        from sutra_cluster.sharding.shardmap import ShardMap

        if isinstance(shard_map, str):
            shard_map = ShardMap.parse(shard_map)
        if shard_map is None and addresses:
            shard_map = ShardMap(shards=1, members={0: tuple(addresses)})
        if shard_map is None and etcd:
            shard_map = shardmap.load_from_etcd(etcd, cluster)
            if shard_map is None:  # an unsharded cluster: follow shard 0's leader
                return Leader(etcd, cluster, 0, self._connect_one, self.timeout, self.failover_deadline, watch)
        if shard_map is None:
            raise ConfigError("SutraClient needs an address, a URL, etcd endpoints or a shard map")
        from sutra_cluster.sharding.reshard_follow import FollowingSet, MapFollower

        def make(smap: ShardMap) -> ShardSet:
            return ShardSet(smap, etcd_endpoints=etcd, cluster=cluster, timeout=self.timeout,
                            write_deadline=self.failover_deadline,
                            read_deadline=self.failover_deadline if read_deadline is None else read_deadline,
                            credentials=self.credentials, max_message_bytes=self._max_message_bytes)

        # Follows the shard map through a reshard (refresh and retry on wrong-shard / moving).
        return Routed(FollowingSet(MapFollower(shard_map, make, etcd_endpoints=etcd, cluster=cluster,
                                               deadline_s=self.failover_deadline)))

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Self:
        """A client for a ``sutra://`` or ``sutra+etcd://`` URL; keyword arguments
        as for the constructor (TLS options given here add to the URL's)."""
        return cls(url, **kwargs)

    # ---- plumbing --------------------------------------------------------
    def _connect_one(self, address: str) -> SutraClient:
        return SutraClient(address, timeout=self.timeout, retry_deadline=0.0, credentials=self.credentials)

    def _client(self, address: str) -> Any:
        """The client for one member (leader-following mode); it has ``.stub``."""
        assert isinstance(self._transport, Leader)
        return self._transport.client(address)

    def call_leader(self, method: str, request: Any) -> Any:
        """Call ``method`` on the shard's leader, following it across failovers
        until ``failover_deadline`` with the same request (and request id).
        Raises grpc.RpcError as the last node answered (etcd mode only)."""
        assert isinstance(self._transport, Leader)
        return self._transport.call(method, request, client=self._client)

    def _invoke(self, method: str, request: Any) -> Any:
        if isinstance(self._transport, Leader):
            try:
                return self.call_leader(method, request)
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from None
            except TimeoutError as exc:
                raise errors.NoLeader(str(exc)) from None
        return self._transport.invoke(method, request)

    def _run(self, call: Call) -> Any:
        response = self._invoke(call.method, call.request)
        self._seen(response)
        return call.parse(response)

    @property
    def stub(self) -> Any:
        """The raw gRPC stub (one address only): for calls this client does not wrap."""
        if not isinstance(self._transport, Direct):
            raise AttributeError("stub: this client routes over several nodes; use its methods")
        return self._transport.stub

    @property
    def channel(self) -> grpc.Channel:
        if not isinstance(self._transport, Direct):
            raise AttributeError("channel: this client routes over several nodes")
        return self._transport.channel

    @property
    def leader_address(self) -> str:
        """The leader's address as last seen in etcd ('' when none is known; leader-following mode)."""
        return self._transport.watch.leader if isinstance(self._transport, Leader) else ""

    def find_leader(self, deadline: float) -> str:
        assert isinstance(self._transport, Leader)
        return self._transport.watch.wait_leader(deadline)

    @property
    def set(self) -> Any:
        """The routed shards (a ``ShardSet``; routing mode only)."""
        if not isinstance(self._transport, Routed):
            raise AttributeError("set: this client does not route shards itself")
        return self._transport.set

    @property
    def shard_map(self) -> Any:
        return self.set.map

    def owner(self, concept_id: str) -> int:
        """The shard that owns ``concept_id`` (routing mode only)."""
        return int(self.set.owner(concept_id))

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writes ----------------------------------------------------------
    def learn_concept(self, concept_id: str, content: str, embedding: np.ndarray | Sequence[float] | None = None, *,
                      strength: float = 1.0, confidence: float = 1.0, attributes: Mapping[str, str] | None = None,
                      request_id: str = "") -> int:
        """Store (or replace) a concept; returns its LSN once it is durable.
        A retry with the same ``request_id`` is applied once."""
        return int(self._run(self._learn_concept(concept_id, content, embedding, strength, confidence, attributes,
                                                 request_id)))

    def learn_association(self, source_id: str, target_id: str, assoc_type: int | str = 0, confidence: float = 1.0,
                          request_id: str = "") -> int:
        """Store a typed edge (with its source concept's shard); returns its LSN."""
        return int(self._run(self._learn_association(source_id, target_id, assoc_type, confidence, request_id)))

    def delete_concept(self, concept_id: str, request_id: str = "") -> int:
        """Delete a concept and every edge touching it (on every shard); returns
        the LSN on its own shard."""
        return int(self._run(self._delete_concept(concept_id, request_id)))

    def learn_batch(self, concepts: Sequence[Concept] = (), associations: Sequence[Association] = (),
                    deletes: Sequence[str] = (), request_id: str = "") -> int:
        """Write atomically (on each shard it touches: all of it or none after a
        crash). Returns the LSN, or 0 when several shards were written (see ``token()``)."""
        return int(self._run(self._learn_batch(concepts, associations, deletes, request_id)))

    @staticmethod
    def batch_request(concepts: Sequence[Concept] = (), associations: Sequence[Association] = (),
                      deletes: Sequence[str] = ()) -> pb.LearnBatchRequest:
        return batch_request(concepts, associations, deletes)

    def bulk_load(self, batches: Iterable[pb.LearnBatchRequest]) -> BulkLoadResult:
        """Stream batches (``batches_of``) in one call; each is its own atomic
        batch. Not retried: a stream is not replayable."""
        r = self._transport.stream(batches)
        self._seen(r)
        return self._bulk_result(r)

    # ---- reads -----------------------------------------------------------
    def query_concept(self, concept_id: str, sequence: int = 0, include_embedding: bool = False, *,
                      token: Token | None = None, read_preference: str | None = None) -> Concept | None:
        """The concept, or None when there is none."""
        return self._run(self._query_concept(concept_id, include_embedding, sequence, token,  # type: ignore[no-any-return]
                                             read_preference))

    get = query_concept

    def get_concepts(self, concept_ids: Iterable[str], *, include_embedding: bool = False, sequence: int = 0,
                     token: Token | None = None, read_preference: str | None = None,
                     allow_partial: bool = False) -> list[Concept | None]:
        """Many concepts in one call, in the order asked (None for a missing id).
        At most SUTRA_MAX_BATCH ids."""
        return self._run(self._get_concepts(concept_ids, include_embedding, sequence, token,  # type: ignore[no-any-return]
                                            read_preference, allow_partial))

    def scroll(self, *, filter: Filter | None = None, limit: int = 100, after_id: str = "",
               include_embedding: bool = False, sequence: int = 0, token: Token | None = None,
               read_preference: str | None = None, allow_partial: bool = False) -> Page:
        """One page of concepts in id order, optionally filtered by attributes;
        pass ``page.next_after_id`` as ``after_id`` for the next page."""
        return self._run(self._scroll(filter, limit, after_id, include_embedding, sequence, token,  # type: ignore[no-any-return]
                                      read_preference, allow_partial))

    def iterate(self, *, filter: Filter | None = None, page_size: int = 500, include_embedding: bool = False,
                token: Token | None = None, read_preference: str | None = None) -> Iterator[Concept]:
        """Every concept (matching ``filter``) in id order, a page at a time.
        Concepts written while it runs may or may not be seen."""
        after = ""
        while True:
            page = self.scroll(filter=filter, limit=page_size, after_id=after, include_embedding=include_embedding,
                               token=token, read_preference=read_preference)
            yield from page.concepts
            if not page.next_after_id:
                return
            after = page.next_after_id

    def count(self, *, filter: Filter | None = None, sequence: int = 0, token: Token | None = None,
              read_preference: str | None = None, allow_partial: bool = False) -> int:
        """How many concepts (matching ``filter``) there are."""
        return int(self._run(self._count(filter, sequence, token, read_preference, allow_partial)))

    def get_neighbors(self, concept_id: str, direction: int | str = pb.BOTH, sequence: int = 0, *,
                      token: Token | None = None, read_preference: str | None = None,
                      allow_partial: bool = False) -> list[str]:
        """Neighbour ids, sorted, each once. ``direction``: both, outgoing or incoming."""
        return self._run(self._neighbors(concept_id, direction, sequence, token, read_preference,  # type: ignore[no-any-return]
                                         allow_partial, ids=True))

    def neighbors(self, concept_id: str, direction: int | str = pb.BOTH, sequence: int = 0, *,
                  token: Token | None = None, read_preference: str | None = None,
                  allow_partial: bool = False) -> list[Neighbor]:
        """Neighbours with their edge type, confidence and direction."""
        return self._run(self._neighbors(concept_id, direction, sequence, token, read_preference,  # type: ignore[no-any-return]
                                         allow_partial, ids=False))

    def get_neighbors_batch(self, concept_ids: Iterable[str], direction: int | str = pb.BOTH, sequence: int = 0, *,
                            token: Token | None = None, read_preference: str | None = None,
                            allow_partial: bool = False) -> list[list[str]]:
        """The neighbour ids of many concepts in one call, in the order asked
        (at most SUTRA_MAX_BATCH ids)."""
        return self._run(self._neighbors_batch(concept_ids, direction, sequence, token, read_preference,  # type: ignore[no-any-return]
                                                allow_partial))

    def find_path(self, start_id: str, end_id: str, max_depth: int = 0, sequence: int = 0, *,
                  token: Token | None = None, read_preference: str | None = None,
                  allow_partial: bool = False) -> list[str] | None:
        """A shortest path (breadth first, neighbours in id order), or None."""
        return self._run(self._find_path(start_id, end_id, max_depth, sequence, token,  # type: ignore[no-any-return]
                                         read_preference, allow_partial))

    def vector_search(self, query: np.ndarray | Sequence[float], k: int = 10, ef_search: int = 0,
                      sequence: int = 0, *, filter: Filter | None = None, score_threshold: float | None = None,
                      with_fields: bool | Collection[str] = False, token: Token | None = None,
                      read_preference: str | None = None, allow_partial: bool = False) -> list[SearchHit]:
        """The ``k`` concepts most similar (cosine) to ``query``, best first.

        ``filter``: ``{key: value}`` or ``{key: [values]}``, ANDed, applied inside
        each node's search (the top k among the matches). ``score_threshold``:
        only hits at least this similar. ``with_fields``: True (content and
        attributes) or a set of "content", "attributes", "embedding", returned
        in each hit's ``concept``."""
        return self._run(self._vector_search(query, k, ef_search, filter, score_threshold,  # type: ignore[no-any-return]
                                             with_fields, sequence, token, read_preference, allow_partial))

    search = vector_search

    # ---- operations ------------------------------------------------------
    def flush(self) -> FlushResult:
        """Checkpoint now (every shard's leader when routing)."""
        return self._run(self._flush())  # type: ignore[no-any-return]

    def health(self) -> Health:
        return self._run(self._health())  # type: ignore[no-any-return]

    def stats(self) -> Stats:
        return self._run(self._stats())  # type: ignore[no-any-return]

    def digest(self, sequence: int = 0, version: int = 0) -> Digest:
        """The state digest at (at least) ``sequence``: equal on nodes with the same data.
        ``version``: the digest version (0: the node's own; 1: what older builds report)."""
        return self._run(self._digest(sequence, version))  # type: ignore[no-any-return]


def batches_of(concepts: Iterable[Concept], size: int) -> Iterator[pb.LearnBatchRequest]:
    """Group concepts into batch requests of ``size`` for ``bulk_load``."""
    chunk: list[Concept] = []
    for c in concepts:
        chunk.append(c)
        if len(chunk) >= size:
            yield batch_request(chunk)
            chunk = []
    if chunk:
        yield batch_request(chunk)
