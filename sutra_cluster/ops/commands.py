"""``sutra-cluster status``, ``history``, ``pause``, ``resume`` and ``forget``.

Exit codes of ``status`` (documented in docs/HA.md, "Command line"):

- 0: every shard has a leader and every member answers;
- 1: degraded: a member is down or unreachable, or a shard has no leader;
- 2: usage: no etcd endpoints nor ``--nodes``, or a bad flag value;
- 3: etcd could not be read.

The other commands exit 0 on success, 1 on failure, 2 on usage, 3 when etcd
cannot be reached.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone

from sutra_cluster.failover.coordinator import CoordinatorUnavailable
from sutra_cluster.failover.keys import (
    HistoryEntry,
    Pause,
    Registration,
    cluster_prefix,
    registry_key,
    shard_prefix,
)
from sutra_cluster.ops import output
from sutra_cluster.ops.view import ClusterView, from_etcd, from_nodes
from sutra_cluster.ops.waiting import call

OK, DEGRADED, USAGE, ETCD_DOWN = 0, 1, 2, 3
WATCH_MIN_S, WATCH_MAX_S = 0.2, 3600.0


def addresses(raw: str | None) -> list[str]:
    return [a.strip() for a in (raw or "").split(",") if a.strip()]


def etcd_endpoints(args: argparse.Namespace) -> list[str]:
    return addresses(getattr(args, "etcd", None) or os.environ.get("SUTRA_ETCD_ENDPOINTS", ""))


def fmt_of(args: argparse.Namespace) -> str:
    return "json" if getattr(args, "json", False) else (getattr(args, "output", None) or "table")


def _err(cmd: str, msg: str) -> None:
    print(f"sutra-cluster {cmd}: {msg}", file=sys.stderr)


def _utc(t: float | None) -> str:
    if not t:
        return "-"
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _coord(endpoints: Sequence[str], cluster: str):  # type: ignore[no-untyped-def]
    from sutra_cluster.failover.etcd import EtcdCoordinator

    return EtcdCoordinator(list(endpoints), cluster_prefix(cluster), "admin", timeout=2.0)


# ---- status -----------------------------------------------------------------------
def render_status(view: ClusterView) -> str:
    heads = ["SHARD", "NODE", "ADDRESS", "ROLE", "STATE", "TERM", "LAST LSN", "FLUSHED", "APPLIED", "LAG B",
             "LAG MS", "SYNC", "VERSION", "LAST SEEN"]
    rows = []
    for s in view.shards:
        for m in s.members:
            seen = "now" if m.up else output.ago(m.last_seen_s)
            rows.append([s.shard, m.node, m.address, m.role, m.state or m.error.split(":")[0] or None, m.term,
                         m.last_lsn, m.flushed_lsn, m.applied_lsn, m.lag_bytes, m.lag_ms, "yes" if m.sync else "",
                         m.version or None, seen])
    members = sum(len(s.members) for s in view.shards)
    down = sum(1 for s in view.shards for m in s.members if not m.up)
    title = (f"cluster {view.cluster or '(--nodes)'} at {_utc(view.time)}: {len(view.shards)} shard(s), "
             f"{members - down} of {members} members up")
    lines = [title, output.table(heads, rows, right=("TERM", "LAST LSN", "FLUSHED", "APPLIED", "LAG B", "LAG MS"))]
    for s in view.shards:
        if s.paused:
            lines.append(f"shard {s.shard}: MAINTENANCE MODE since {_utc(s.paused_since)}"
                         + (f" by {s.paused_by}" if s.paused_by else "")
                         + (f" ({s.paused_reason})" if s.paused_reason else "")
                         + ": no automatic failover (sutra-cluster resume ends it)")
    lines += [f"! {p}" for p in view.problems()]
    return "\n".join(lines)


def _read_view(args: argparse.Namespace) -> ClusterView:
    nodes = addresses(args.nodes)
    if nodes:
        return from_nodes(nodes)
    shards = [args.shard] if args.shard is not None else []
    return from_etcd(etcd_endpoints(args), args.cluster, shards)


LOCAL_DIR = ".local-cluster"  # `sutra-cluster local up`'s default folder


def local_etcd(root: str = LOCAL_DIR) -> str:
    """The etcd endpoint of a local cluster started from this folder (``local up``),
    or ''. Its cluster secret, if any, goes into this process's environment so
    the nodes answer the admin calls (this command is a short-lived process)."""
    import json
    from pathlib import Path

    base = Path(root)
    try:
        procs = json.loads((base / "cluster.json").read_text())
    except (OSError, ValueError):
        return ""
    port = next((p.get("port") for p in procs if isinstance(p, dict) and p.get("role") == "etcd"), None)
    if not port:
        return ""
    secret = base / "cluster-secret"
    if secret.exists() and not os.environ.get("SUTRA_CLUSTER_SECRET"):
        os.environ["SUTRA_CLUSTER_SECRET"] = secret.read_text().strip()
        os.environ["SUTRA_CLUSTER_SECRET_FILE"] = ""
    return f"127.0.0.1:{port}"


def status(args: argparse.Namespace) -> int:
    fmt = fmt_of(args)
    if not addresses(args.nodes) and not etcd_endpoints(args):
        args.etcd = local_etcd()  # no flags: the local cluster of this folder, as `local up` left it
    if not addresses(args.nodes) and not etcd_endpoints(args):
        _err("status", "give --etcd host:port,... (or set SUTRA_ETCD_ENDPOINTS), or --nodes host:port,..., "
             f"or run it where `sutra-cluster local up` made {LOCAL_DIR}/")
        return USAGE
    if args.watch is not None and not WATCH_MIN_S <= args.watch <= WATCH_MAX_S:
        _err("status", f"--watch {args.watch}: the refresh interval must be {WATCH_MIN_S}..{WATCH_MAX_S:.0f} seconds")
        return USAGE
    if args.watch is None:
        return _status_once(args, fmt)
    clear = fmt == "table" and sys.stdout.isatty()
    code = OK
    n = 0
    # Ctrl-C (SIGINT) or SIGTERM stops the watch between two refreshes: a KeyboardInterrupt raised
    # inside a refresh (etcd's client, the thread pool asking the nodes) could leave a library's
    # threads blocked, and the process hung on exit (a CI run saw `status --watch` ignore SIGINT).
    # A refresh is bounded by its etcd and RPC timeouts.
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.is_set() and (args.count is None or n < args.count):
            t0 = time.monotonic()
            if clear:
                sys.stdout.write("\033[H\033[2J")
            code = _status_once(args, fmt)
            if fmt == "table":
                print(f"(every {args.watch:g} s; Ctrl-C to stop)", flush=True)
            n += 1
            if args.count is not None and n >= args.count:
                break
            stop.wait(max(0.0, args.watch - (time.monotonic() - t0)))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return OK if stop.is_set() else code  # the operator stopped watching: not a failure


def _status_once(args: argparse.Namespace, fmt: str) -> int:
    try:
        view = _read_view(args)
    except CoordinatorUnavailable as exc:
        _err("status", str(exc))
        if fmt != "table":
            output.dump({"cluster": args.cluster, "time": time.time(), "error": str(exc)}, fmt)
        return ETCD_DOWN
    if fmt == "table":
        print(render_status(view), flush=True)
    else:
        output.dump(view.as_dict(), fmt)
    return DEGRADED if view.problems() else OK


# ---- history ----------------------------------------------------------------------
def read_history(endpoints: Sequence[str], cluster: str, shard: int | None) -> list[tuple[int, HistoryEntry]]:
    coord = _coord(endpoints, cluster)
    try:
        kv = call(lambda: coord.read_prefix(f"/{cluster}/history/"))
    finally:
        coord.close()
    out: list[tuple[int, HistoryEntry]] = []
    for k, v in kv.items():
        n = k.rsplit("/", 1)[-1]
        if not n.isdigit() or (shard is not None and int(n) != shard):
            continue
        out += [(int(n), e) for e in HistoryEntry.decode_list(v)]
    return sorted(out, key=lambda se: (se[1].time, se[0]))


def history(args: argparse.Namespace) -> int:
    endpoints = etcd_endpoints(args)
    if not endpoints:
        _err("history", "give --etcd host:port,... (or set SUTRA_ETCD_ENDPOINTS)")
        return USAGE
    try:
        entries = read_history(endpoints, args.cluster, args.shard)
    except CoordinatorUnavailable as exc:
        _err("history", str(exc))
        return ETCD_DOWN
    if args.limit:
        entries = entries[-args.limit:]
    fmt = fmt_of(args)
    if fmt != "table":
        output.dump([{"shard": s, "time_utc": _utc(e.time), **e.as_dict()} for s, e in entries], fmt)
        return OK
    if not entries:
        print("no leadership changes recorded" + (f" for shard {args.shard}" if args.shard is not None else ""))
        return OK
    print(output.table(["TIME (UTC)", "SHARD", "EVENT", "NODE", "TERM", "LSN", "REASON"],
                       [[_utc(e.time), s, e.event, e.node_id, e.term, e.lsn, e.reason] for s, e in entries],
                       right=("TERM", "LSN")))
    return OK


# ---- pause / resume / forget ------------------------------------------------------------
def _shards(coord, cluster: str, shard: int | None) -> list[int]:  # type: ignore[no-untyped-def]
    if shard is not None:
        return [shard]
    from sutra_cluster.ops.view import read_etcd

    kv = call(lambda: coord.read_prefix(cluster_prefix(cluster)))
    return [s.shard for s in read_etcd(kv, cluster, time.time())]


def pause(args: argparse.Namespace) -> int:
    """Maintenance mode: write the pause key of each shard (every HA loop reads it each tick)."""
    return _maintenance(args, on=True)


def resume(args: argparse.Namespace) -> int:
    return _maintenance(args, on=False)


def _maintenance(args: argparse.Namespace, on: bool) -> int:
    cmd = "pause" if on else "resume"
    endpoints = etcd_endpoints(args)
    if not endpoints:
        _err(cmd, "give --etcd host:port,... (or set SUTRA_ETCD_ENDPOINTS)")
        return USAGE
    coord = _coord(endpoints, args.cluster)
    try:
        shards = _shards(coord, args.cluster, args.shard)
        if not shards:
            _err(cmd, f"no shards of cluster {args.cluster!r} in etcd; give --shard N")
            return 1
        by = f"{getpass.getuser()}@{socket.gethostname()}"
        for n in shards:
            key = shard_prefix(args.cluster, n) + "pause"
            # Both idempotent: retried through a slow or failed etcd connection.
            if on:
                call(functools.partial(coord.put, key, Pause(time.time(), by, args.reason or "").encode()))
            else:
                call(functools.partial(coord.delete, key))
    except CoordinatorUnavailable as exc:
        _err(cmd, str(exc))
        return ETCD_DOWN
    finally:
        coord.close()
    which = ", ".join(str(n) for n in shards)
    if on:
        print(f"maintenance mode on for shard(s) {which}: no automatic failover and no sync-set member replaced until "
              f"`sutra-cluster resume`; a leader that dies stays down until then")
    else:
        print(f"maintenance mode off for shard(s) {which}: automatic failover is back")
    return OK


def forget(args: argparse.Namespace) -> int:
    """Drop a decommissioned member's registration (it then no longer shows as down)."""
    endpoints = etcd_endpoints(args)
    if not endpoints:
        _err("forget", "give --etcd host:port,... (or set SUTRA_ETCD_ENDPOINTS)")
        return USAGE
    coord = _coord(endpoints, args.cluster)
    try:
        if call(lambda: coord.get(shard_prefix(args.cluster, args.shard) + "members/" + args.node)) is not None:
            _err("forget", f"{args.node} is a live member of shard {args.shard}; stop it first")
            return 1
        raw = call(lambda: coord.get(registry_key(args.cluster, args.shard, args.node)))
        if raw is None:
            _err("forget", f"{args.node} is not registered in shard {args.shard}")
            return 1
        call(lambda: coord.delete(registry_key(args.cluster, args.shard, args.node)))
    except CoordinatorUnavailable as exc:
        _err("forget", str(exc))
        return ETCD_DOWN
    finally:
        coord.close()
    reg = Registration.decode(raw)
    print(f"forgot {args.node} ({reg.address}, last seen {_utc(reg.last_seen)}) in shard {args.shard}")
    return OK


# ---- reinit -----------------------------------------------------------------------------
def _find_member(args: argparse.Namespace) -> tuple[str, str, int | None, str]:
    """(node id, address, shard, why it must not be reinitialised or '') for NODE
    (a node id looked up in etcd, or host:port)."""
    from sutra_cluster.admin import replication_status

    if ":" in args.node:
        st = replication_status(args.node, timeout=5.0)
        why = f"{st.node_id} at {args.node} is the leader (term {st.term})" if st.role == "leader" else ""
        return st.node_id, args.node, None, why
    endpoints = etcd_endpoints(args)
    if not endpoints:
        raise LookupError(f"{args.node}: give --etcd host:port (or SUTRA_ETCD_ENDPOINTS) to find it, or host:port")
    view = from_etcd(endpoints, args.cluster, [args.shard] if args.shard is not None else [])
    for s in view.shards:
        for m in s.members:
            if m.node != args.node:
                continue
            if not m.up:
                raise LookupError(f"{args.node} is {m.role} in shard {s.shard}: start it first (reinit runs on the node)")
            if s.leader == m.node or m.role == "leader":
                return m.node, m.address, s.shard, f"{m.node} is the leader of shard {s.shard} (term {s.term})"
            if m.node in s.sync_set and not args.force:
                return m.node, m.address, s.shard, (
                    f"{m.node} is in shard {s.shard}'s sync set {s.sync_set}: it holds acknowledged writes the "
                    "shard may need if the leader fails during the rebuild; wait until the leader replaces it, "
                    "or give --force")
            return m.node, m.address, s.shard, ""
    raise LookupError(f"{args.node} is not a member of cluster {args.cluster!r}"
                      + (f" shard {args.shard}" if args.shard is not None else ""))


def reinit(args: argparse.Namespace) -> int:
    """Rebuild a replica from its leader (patronictl reinit): refuses the leader."""
    import grpc

    from sutra_cluster.admin import reinit as rpc_reinit

    try:
        node, address, shard, why = _find_member(args)
    except LookupError as exc:
        _err("reinit", str(exc).strip("'\""))
        return 1
    except CoordinatorUnavailable as exc:
        _err("reinit", str(exc))
        return ETCD_DOWN
    if why:
        _err("reinit", f"refused: {why}")
        return 1
    where = f"{node} ({address}" + (f", shard {shard})" if shard is not None else ")")
    if not args.yes:
        if not sys.stdin.isatty():
            _err("reinit", f"this replaces every file of {where} with its leader's copy; add --yes to confirm")
            return USAGE
        if input(f"Rebuild {where} from its leader? Its current files are set aside. [y/N] ").strip().lower() != "y":
            print("not confirmed; nothing done")
            return 1
    try:
        from sutra_cluster.ops.progress import spinner

        with spinner(f"rebuilding {node} from its leader's snapshot"):
            resp = rpc_reinit(address, timeout=args.timeout)
    except grpc.RpcError as exc:
        _err("reinit", f"{exc.code().name}: {exc.details()}")  # type: ignore[attr-defined]
        return 1
    print(f"reinit done: {node} rebuilt from {resp.leader_address}: snapshot at LSN {resp.lsn} (term {resp.term}), "
          f"{resp.bytes} bytes in {resp.seconds:.2f} s; streaming again (old files in its replaced-* folder)")
    return OK
