"""``AsyncSutraClient``: the same API as ``SutraClient`` on asyncio.

One address (a node or a router) and one shard's leader through etcd run on
``grpc.aio`` channels; the leader lookup in etcd (a blocking client) runs in a
worker thread. A sharded cluster routed by the client itself runs the sync
routing code in worker threads (it fans out on its own pool anyway); for a
large number of concurrent calls, prefer a router and one address.

```python
async with AsyncSutraClient("sutra://127.0.0.1:50051") as c:
    seq = await c.learn_concept("c1", "hello", vec)
    hits = await c.vector_search(vec, k=5, filter={"lang": "en"})
```
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from typing import Any, Self

import grpc
import grpc.aio
import numpy as np

from sutra_cluster import errors
from sutra_cluster.client.calls import READ_METHODS, Call, Calls
from sutra_cluster.client.errors import from_rpc_error
from sutra_cluster.client.options import channel_options, parse_url, tls_credentials
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
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import storage_pb2_grpc
from sutra_cluster.retry import Retry, classify

Token = Mapping[int, int]
_RETRY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


class _AioChannels:
    def __init__(self, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]) -> None:
        self.credentials, self.options = credentials, options
        self.stubs: dict[str, tuple[grpc.aio.Channel, storage_pb2_grpc.StorageServiceStub]] = {}

    def stub(self, address: str) -> Any:
        if address not in self.stubs:
            ch = (grpc.aio.secure_channel(address, self.credentials, options=self.options) if self.credentials
                  else grpc.aio.insecure_channel(address, options=self.options))
            self.stubs[address] = (ch, storage_pb2_grpc.StorageServiceStub(ch))
        return self.stubs[address][1]

    async def drop(self, address: str) -> None:
        got = self.stubs.pop(address, None)
        if got is not None:
            await got[0].close()

    async def close(self) -> None:
        for address in list(self.stubs):
            await self.drop(address)


class AsyncSutraClient(Calls):
    """The asyncio client: every method of ``SutraClient`` as a coroutine
    (``iterate`` is an async iterator). Takes the same addresses, URLs, etcd
    endpoints and TLS options. Use it as ``async with`` or call ``close()``."""

    def __init__(self, address: str | Sequence[str] | None = None, *, etcd: Sequence[str] = (),
                 cluster: str = "sutra", shard: int | None = None, shard_map: Any = None,
                 read_preference: str = "leader", timeout: float = 30.0, retry_deadline: float = 10.0,
                 failover_deadline: float = 15.0, credentials: grpc.ChannelCredentials | None = None,
                 tls: bool = False, ca_cert: str | bytes | None = None, client_cert: str | bytes | None = None,
                 client_key: str | bytes | None = None, server_name: str = "",
                 max_message_bytes: int = 128 << 20) -> None:
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
        self.timeout, self.retry_deadline, self.failover_deadline = timeout, retry_deadline, failover_deadline
        addresses = [a.strip() for a in address.split(",")] if isinstance(address, str) else list(address or ())
        self._channels = _AioChannels(credentials, channel_options(max_message_bytes, server_name))
        self._address = ""
        self._watch: Any = None
        self._sync: Any = None  # a routing SutraClient, run in worker threads
        if len(addresses) == 1 and shard_map is None and not etcd:
            self._address = addresses[0]
        elif etcd and shard is not None:
            from sutra_cluster.failover.discovery import ShardWatch

            self._watch = ShardWatch(list(etcd), cluster, shard, name="client", timeout=2.0)
        else:
            from sutra_cluster.client.sync import SutraClient

            self._sync = SutraClient(addresses or None, etcd=etcd, cluster=cluster, shard=shard, shard_map=shard_map,
                                     read_preference=read_preference, timeout=timeout, retry_deadline=retry_deadline,
                                     failover_deadline=failover_deadline, credentials=credentials,
                                     max_message_bytes=max_message_bytes)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Self:
        return cls(url, **kwargs)

    async def close(self) -> None:
        await self._channels.close()
        if self._watch is not None:
            await asyncio.to_thread(self._watch.close)
        if self._sync is not None:
            await asyncio.to_thread(self._sync.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- plumbing --------------------------------------------------------
    async def _direct(self, method: str, request: Any) -> Any:
        fn = getattr(self._channels.stub(self._address), method)
        deadline = time.monotonic() + (0 if method == "HealthCheck" else self.retry_deadline)
        delay = 0.05
        while True:
            try:
                return await fn(request, timeout=self.timeout)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _RETRY_CODES or time.monotonic() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)

    async def _leader(self, method: str, request: Any) -> Any:
        deadline = time.monotonic() + self.failover_deadline
        address = self._watch.leader or await asyncio.to_thread(self._watch.wait_leader, deadline)
        while True:
            try:
                return await getattr(self._channels.stub(address), method)(request, timeout=self.timeout)
            except grpc.aio.AioRpcError as exc:
                if classify(exc, write=method not in READ_METHODS) != Retry.NEW_LEADER or time.monotonic() > deadline:
                    raise
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    await self._channels.drop(address)  # a dead node's channel sits in reconnect backoff
                await asyncio.sleep(0.02)
                self._watch.forget(address)
                address = await asyncio.to_thread(self._watch.wait_leader, deadline)

    async def _invoke(self, method: str, request: Any) -> Any:
        if self._sync is not None:
            return await asyncio.to_thread(self._sync._transport.invoke, method, request)
        try:
            if self._watch is not None:
                return await self._leader(method, request)
            return await self._direct(method, request)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        except TimeoutError as exc:
            raise errors.NoLeader(str(exc)) from None

    async def _run(self, call: Call) -> Any:
        response = await self._invoke(call.method, call.request)
        self._seen(response)
        return call.parse(response)

    # ---- writes ----------------------------------------------------------
    async def learn_concept(self, concept_id: str, content: str, embedding: np.ndarray | Sequence[float] | None = None,
                            *, strength: float = 1.0, confidence: float = 1.0,
                            attributes: Mapping[str, str] | None = None, request_id: str = "") -> int:
        """As ``SutraClient.learn_concept``."""
        return int(await self._run(self._learn_concept(concept_id, content, embedding, strength, confidence,
                                                       attributes, request_id)))

    async def learn_association(self, source_id: str, target_id: str, assoc_type: int | str = 0,
                                confidence: float = 1.0, request_id: str = "") -> int:
        return int(await self._run(self._learn_association(source_id, target_id, assoc_type, confidence, request_id)))

    async def delete_concept(self, concept_id: str, request_id: str = "") -> int:
        return int(await self._run(self._delete_concept(concept_id, request_id)))

    async def learn_batch(self, concepts: Sequence[Concept] = (), associations: Sequence[Association] = (),
                          deletes: Sequence[str] = (), request_id: str = "") -> int:
        return int(await self._run(self._learn_batch(concepts, associations, deletes, request_id)))

    async def bulk_load(self, batches: Iterable[pb.LearnBatchRequest]) -> BulkLoadResult:
        """Stream batches in one call (one address or leader only; not retried)."""
        if self._sync is not None:
            return await asyncio.to_thread(self._sync.bulk_load, batches)  # type: ignore[no-any-return]
        address = self._address or self._watch.leader or await asyncio.to_thread(
            self._watch.wait_leader, time.monotonic() + self.failover_deadline)
        try:
            r = await self._channels.stub(address).LearnStream(iter(batches), timeout=None)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        self._seen(r)
        return self._bulk_result(r)

    # ---- reads -----------------------------------------------------------
    async def query_concept(self, concept_id: str, sequence: int = 0, include_embedding: bool = False, *,
                            token: Token | None = None, read_preference: str | None = None) -> Concept | None:
        return await self._run(self._query_concept(concept_id, include_embedding, sequence, token,  # type: ignore[no-any-return]
                                                   read_preference))

    get = query_concept

    async def get_concepts(self, concept_ids: Iterable[str], *, include_embedding: bool = False, sequence: int = 0,
                           token: Token | None = None, read_preference: str | None = None,
                           allow_partial: bool = False) -> list[Concept | None]:
        return await self._run(self._get_concepts(concept_ids, include_embedding, sequence, token,  # type: ignore[no-any-return]
                                                  read_preference, allow_partial))

    async def scroll(self, *, filter: Filter | None = None, limit: int = 100, after_id: str = "",
                     include_embedding: bool = False, sequence: int = 0, token: Token | None = None,
                     read_preference: str | None = None, allow_partial: bool = False) -> Page:
        return await self._run(self._scroll(filter, limit, after_id, include_embedding, sequence, token,  # type: ignore[no-any-return]
                                            read_preference, allow_partial))

    async def iterate(self, *, filter: Filter | None = None, page_size: int = 500, include_embedding: bool = False,
                      token: Token | None = None, read_preference: str | None = None) -> AsyncIterator[Concept]:
        after = ""
        while True:
            page = await self.scroll(filter=filter, limit=page_size, after_id=after,
                                     include_embedding=include_embedding, token=token, read_preference=read_preference)
            for c in page.concepts:
                yield c
            if not page.next_after_id:
                return
            after = page.next_after_id

    async def count(self, *, filter: Filter | None = None, sequence: int = 0, token: Token | None = None,
                    read_preference: str | None = None, allow_partial: bool = False) -> int:
        return int(await self._run(self._count(filter, sequence, token, read_preference, allow_partial)))

    async def get_neighbors(self, concept_id: str, direction: int | str = pb.BOTH, sequence: int = 0, *,
                            token: Token | None = None, read_preference: str | None = None,
                            allow_partial: bool = False) -> list[str]:
        return await self._run(self._neighbors(concept_id, direction, sequence, token, read_preference,  # type: ignore[no-any-return]
                                               allow_partial, ids=True))

    async def neighbors(self, concept_id: str, direction: int | str = pb.BOTH, sequence: int = 0, *,
                        token: Token | None = None, read_preference: str | None = None,
                        allow_partial: bool = False) -> list[Neighbor]:
        return await self._run(self._neighbors(concept_id, direction, sequence, token, read_preference,  # type: ignore[no-any-return]
                                               allow_partial, ids=False))

    async def get_neighbors_batch(self, concept_ids: Iterable[str], direction: int | str = pb.BOTH, sequence: int = 0, *,
                            token: Token | None = None, read_preference: str | None = None,
                            allow_partial: bool = False) -> list[list[str]]:
        """The neighbour ids of many concepts in one call, in the order asked
        (at most SUTRA_MAX_BATCH ids)."""
        return await self._run(self._neighbors_batch(concept_ids, direction, sequence, token, read_preference,  # type: ignore[no-any-return]
                                                allow_partial))

    async def find_path(self, start_id: str, end_id: str, max_depth: int = 0, sequence: int = 0, *,
                        token: Token | None = None, read_preference: str | None = None,
                        allow_partial: bool = False) -> list[str] | None:
        return await self._run(self._find_path(start_id, end_id, max_depth, sequence, token,  # type: ignore[no-any-return]
                                               read_preference, allow_partial))

    async def vector_search(self, query: np.ndarray | Sequence[float], k: int = 10, ef_search: int = 0,
                            sequence: int = 0, *, filter: Filter | None = None, score_threshold: float | None = None,
                            with_fields: bool | Collection[str] = False, token: Token | None = None,
                            read_preference: str | None = None, allow_partial: bool = False) -> list[SearchHit]:
        """As ``SutraClient.vector_search``."""
        return await self._run(self._vector_search(query, k, ef_search, filter, score_threshold,  # type: ignore[no-any-return]
                                                   with_fields, sequence, token, read_preference, allow_partial))

    search = vector_search

    # ---- operations ------------------------------------------------------
    async def flush(self) -> FlushResult:
        return await self._run(self._flush())  # type: ignore[no-any-return]

    async def health(self) -> Health:
        return await self._run(self._health())  # type: ignore[no-any-return]

    async def stats(self) -> Stats:
        return await self._run(self._stats())  # type: ignore[no-any-return]

    async def digest(self, sequence: int = 0, version: int = 0) -> Digest:
        return await self._run(self._digest(sequence, version))  # type: ignore[no-any-return]
