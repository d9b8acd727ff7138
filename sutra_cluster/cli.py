"""The ``sutra-cluster`` command line."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import sys

from sutra_cluster import config
from sutra_cluster.errors import ConfigError, StartupError, StorageFailure


def install_fault_trace() -> None:
    """A node killed by a fatal signal (SIGSEGV, SIGBUS: under
    SUTRA_VECTOR_STORAGE=mmap a data file cut in place, or a disk read error on
    a mapped page) writes every thread's Python stack to stderr, its log, first."""
    faulthandler.enable(all_threads=True)


def _serve(args: argparse.Namespace) -> int:
    install_fault_trace()
    # One BLAS thread per search: concurrent gRPC workers already use the cores,
    # and BLAS threads per call contend (measured: 4 concurrent exact searches
    # ~160 q/s with a thread per core, ~1,400 q/s with one). Set before numpy loads.
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    from sutra_cluster.server import serve

    try:
        cfg = config.load()
    except ConfigError as exc:
        print(f"sutra-cluster: {exc}", file=sys.stderr)
        return 2
    _private_files()
    try:
        return serve(cfg)
    except (StorageFailure, StartupError) as exc:
        print(f"sutra-cluster: cannot start: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        # A file or folder the node cannot use (read-only, STORAGE_PATH is a file,
        # a damaged terms.json): one line that names it; the traceback at debug level.
        logging.getLogger("sutra_cluster.cli").debug("start failed", exc_info=True)
        print(f"sutra-cluster: cannot start: {_describe(exc)}", file=sys.stderr)
        return 1


def _private_files() -> None:
    """Data and backup files 0600, folders 0700, whatever the caller's umask
    (review L6: they were world-readable outside the systemd unit)."""
    os.umask(os.umask(0o077) | 0o077)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


def _router(args: argparse.Namespace) -> int:
    from sutra_cluster.sharding import router

    env = dict(os.environ)
    if args.port:
        env["SUTRA_ROUTER_PORT"] = str(args.port)
    if args.shards:
        env["SUTRA_SHARDS"] = str(args.shards)
    try:
        cfg = router.load_config(env)
        return router.serve(cfg)
    except ConfigError as exc:
        print(f"sutra-cluster router: {exc}", file=sys.stderr)
        return 2


def _local(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from sutra_cluster import local

    root = Path(args.dir).resolve()
    if args.action == "down":
        n = local.down(root)
        print(f"stopped {n} process(es) of the local cluster in {root}")
        return 0
    if args.action == "kill-leader":
        old, new, rto = local.kill_leader(root)
        print(f"killed the leader at {old} with SIGKILL; {new} took over; first acknowledged write "
              f"after {rto * 1000:.0f} ms; the old node restarted as a replica")
        return 0
    procs = local.up(root, dim=args.dim, base_port=args.port, commit_mode=args.commit_mode)
    (root / "settings.json").write_text(json.dumps({"dim": args.dim, "commit_mode": args.commit_mode}))
    etcd = next(p for p in procs if p.role == "etcd")
    seq = None if args.no_sample else local.sample_data(f"127.0.0.1:{etcd.port}", args.dim)
    if args.prometheus:
        procs.append(local.start_prometheus(root, procs))
    local.print_table(procs, seq)
    return 0


def _addresses(raw: str) -> list[str]:
    return [a.strip() for a in raw.split(",") if a.strip()]


def _promote(args: argparse.Namespace) -> int:
    from sutra_cluster import admin

    resp = admin.promote(args.node, _addresses(args.followers or ""), args.min_lsn)
    print(f"promoted {args.node}: leader at term {resp.term} from LSN {resp.lsn}")
    return 0


def _follow(args: argparse.Namespace) -> int:
    from sutra_cluster import admin

    resp = admin.follow(args.node, args.leader)
    print(f"{args.node} now follows {args.leader} (term {resp.term})")
    return 0


def _ops(name: str):  # type: ignore[no-untyped-def]
    """The handler ``name`` of ops/commands.py (imported when the command runs)."""
    def run(args: argparse.Namespace) -> int:
        from sutra_cluster.ops import commands

        return int(getattr(commands, name)(args))

    return run


def _output_flags(parser: argparse.ArgumentParser) -> None:
    """-o/--output and --json for a read command (as patronictl -f, etcdctl -w)."""
    parser.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table",
                        help="output format (default table)")
    parser.add_argument("--json", action="store_true", help="same as -o json")


def _etcd_flags(parser: argparse.ArgumentParser, shard_help: str) -> None:
    parser.add_argument("--etcd", help="etcd host:port,... (default SUTRA_ETCD_ENDPOINTS)")
    parser.add_argument("--cluster", default=os.environ.get("SUTRA_CLUSTER_NAME", "sutra"))
    parser.add_argument("--shard", type=int, default=None, help=shard_help)


def _switchover(args: argparse.Namespace) -> int:
    from sutra_cluster import admin

    etcd = _addresses(args.etcd or os.environ.get("SUTRA_ETCD_ENDPOINTS", ""))
    if not etcd:
        print("sutra-cluster switchover: give --etcd host:port (switchover needs etcd)", file=sys.stderr)
        return 2
    target, secs = admin.switchover(etcd, args.cluster, args.shard, args.to or "")
    print(f"switchover done: {target} leads shard {args.shard} after {secs * 1000:.0f} ms")
    return 0


def _backup(args: argparse.Namespace) -> int:
    from sutra_cluster import backup

    _private_files()
    try:
        info = backup.backup(args.node, args.out, timeout=args.timeout, digest=not args.no_digest,
                             progress=not args.quiet)
    except OSError as exc:
        print(f"sutra-cluster backup: {exc}", file=sys.stderr)
        return 1
    where = f"{args.out} ({info.file}, {backup.MANIFEST})" if os.path.isdir(args.out) else args.out
    print(f"backup of {info.node} ({info.source}) at LSN {info.lsn}, term {info.term}: {info.concepts} concepts, "
          f"{info.edges} edges, {info.bytes} bytes in {info.seconds:.2f} s -> {where}")
    print(f"  sha256 {info.sha256}" + (f"\n  digest {info.digest}" if info.digest else ""))
    return 0


def _restore(args: argparse.Namespace) -> int:
    from sutra_cluster import backup

    _private_files()
    try:
        info = backup.restore(args.source, args.data_dir, force=args.force, progress=not args.quiet)
    except OSError as exc:
        print(f"sutra-cluster restore: {exc}", file=sys.stderr)
        return 1
    print(f"restored LSN {info.lsn} (term {info.term}, {info.concepts} concepts, {info.edges} edges) into "
          f"{info.data_dir} in {info.seconds:.2f} s\n  digest {info.digest}\n"
          f"  start it: STORAGE_PATH={info.data_dir} VECTOR_DIMENSION={info.vector_dimension} sutra-cluster serve")
    return 0


def _load(args: argparse.Namespace) -> int:
    from sutra_cluster import bulkload

    try:
        out = bulkload.load(args.node, args.file, args.batch, show_progress=not args.quiet)
    except (OSError, ValueError) as exc:
        print(f"sutra-cluster load: {exc}", file=sys.stderr)
        return 1
    print(f"loaded {out.concepts} concepts and {out.associations} associations in {out.batches} batches; "
          f"durable up to sequence {out.sequence}")
    return 0


def _certs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sutra_cluster import certs

    d = Path(args.certs_dir)
    try:
        if args.action == "list":
            if args.json or args.output != "table":
                from sutra_cluster.ops import output

                output.dump([certs.cert_info(p) for p in sorted(d.glob("*.crt"))], "json" if args.json else args.output)
                return 0
            print("\n".join(certs.list_certs(d)) or f"no certificates in {d}")
            return 0
        if args.action == "create-ca":
            made = certs.create_ca(d, days=args.days or certs.CA_DAYS, overwrite=args.overwrite)
            print(f"CA {made.cert} (key {made.key}, expires {made.not_after:%Y-%m-%d})")
            return 0
        if not args.name:
            print(f"sutra-cluster certs {args.action}: give a name", file=sys.stderr)
            return 2
        role = args.action.removeprefix("create-")
        made = certs.create_cert(d, role, args.name, args.hosts, days=args.days or certs.LEAF_DAYS)
    except (certs.CertError, OSError) as exc:
        print(f"sutra-cluster certs: {exc}", file=sys.stderr)
        return 1
    print(f"{role} certificate {made.cert} (key {made.key}) for {certs.URI_PREFIX}{role}/{made.name}"
          + (f", hosts {','.join(made.hosts)}" if made.hosts else "") + f", expires {made.not_after:%Y-%m-%d}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from sutra_cluster import __version__

    p = argparse.ArgumentParser(prog="sutra-cluster", description="Sutra Cluster storage nodes and tools")
    p.add_argument("--version", action="version", version=f"sutra-cluster {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run one node, configured from the environment")
    s.set_defaults(func=_serve)
    pr = sub.add_parser("promote", help="make a replica the leader (clusters without etcd)")
    pr.add_argument("--node", required=True, help="host:port of the replica to promote")
    pr.add_argument("--followers", help="host:port,... of the other nodes, pointed at the new leader")
    pr.add_argument("--min-lsn", type=int, default=0, help="refuse unless the node has flushed this LSN")
    pr.set_defaults(func=_promote)
    fo = sub.add_parser("follow", help="point a node at a leader")
    fo.add_argument("--node", required=True)
    fo.add_argument("--leader", required=True)
    fo.set_defaults(func=_follow)
    st = sub.add_parser("status", help="every shard's members: role, state, term, LSNs, lag, version; down members too",
                        description="Without --etcd, SUTRA_ETCD_ENDPOINTS or --nodes: the local cluster that "
                        "`local up` started from this folder. Exit codes: 0 every shard has a leader and every "
                        "member answers; 1 a member is down or unreachable, or a shard has no leader; 2 usage; "
                        "3 etcd unreachable.")
    st.add_argument("--nodes", help="host:port,... of the nodes to ask (no etcd)")
    _etcd_flags(st, "only this shard (default all)")
    _output_flags(st)
    st.add_argument("-w", "--watch", type=float, nargs="?", const=2.0, default=None, metavar="SECONDS",
                    help="refresh every SECONDS (default 2) until Ctrl-C")
    st.add_argument("--count", type=int, default=None, help="with --watch: stop after this many refreshes")
    st.set_defaults(func=_ops("status"))
    hi = sub.add_parser("history", help="when and why leadership changed, per shard (etcd clusters)")
    _etcd_flags(hi, "only this shard (default all)")
    hi.add_argument("--limit", type=int, default=0, help="only the last N changes")
    _output_flags(hi)
    hi.set_defaults(func=_ops("history"))
    pa = sub.add_parser("pause", help="maintenance mode: no automatic failover, no sync-set member replaced, until resume")
    _etcd_flags(pa, "only this shard (default every shard)")
    pa.add_argument("--reason", help="shown by status")
    pa.set_defaults(func=_ops("pause"))
    re_ = sub.add_parser("resume", help="end maintenance mode: automatic failover again")
    _etcd_flags(re_, "only this shard (default every shard)")
    re_.set_defaults(func=_ops("resume"))
    fg = sub.add_parser("forget", help="drop a removed member's registration, so status stops listing it as down")
    fg.add_argument("node", help="node id (SUTRA_NODE_ID)")
    _etcd_flags(fg, "its shard (default 0)")
    fg.set_defaults(func=_ops("forget"), shard=0)
    ri = sub.add_parser("reinit", help="rebuild a replica from its leader's snapshot (refuses the leader)",
                        description="The node sets its WAL and storage files aside (in replaced-<time>/ of its "
                        "data folder), installs a full snapshot from its leader and streams again.")
    ri.add_argument("node", help="node id (found through etcd) or host:port")
    _etcd_flags(ri, "its shard (default: search every shard)")
    ri.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    ri.add_argument("--force", action="store_true", help="also rebuild a member of the sync set")
    ri.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the snapshot (default 600)")
    ri.set_defaults(func=_ops("reinit"))
    sw = sub.add_parser("switchover", help="hand leadership to a caught-up replica (etcd clusters)")
    sw.add_argument("--to", help="node id of the new leader (default: the most caught-up replica)")
    sw.add_argument("--etcd", help="etcd host:port,... (default SUTRA_ETCD_ENDPOINTS)")
    sw.add_argument("--cluster", default=os.environ.get("SUTRA_CLUSTER_NAME", "sutra"))
    sw.add_argument("--shard", type=int, default=0)
    sw.set_defaults(func=_switchover)
    ro = sub.add_parser("router", help="serve a sharded cluster as one StorageService (see sutra_cluster/sharding/router.py)")
    ro.add_argument("--port", type=int, default=0, help="port (default SUTRA_ROUTER_PORT, else STORAGE_PORT, else 50051)")
    ro.add_argument("--shards", type=int, default=0,
                    help="shard count to publish in etcd when it has no shard map yet (default SUTRA_SHARDS)")
    ro.set_defaults(func=_router)
    ld = sub.add_parser("load", help="bulk-load a JSON-lines file through one stream, with a progress bar")
    ld.add_argument("--node", required=True, help="host:port of the leader (or a router)")
    ld.add_argument("--file", required=True)
    ld.add_argument("--batch", type=int, default=500, help="items per streamed batch")
    ld.add_argument("--quiet", action="store_true", help="no progress bar")
    ld.set_defaults(func=_load)
    lc = sub.add_parser("local", help="run the embedded default cluster on this machine")
    lc.add_argument("action", choices=["up", "down", "kill-leader"])
    lc.add_argument("--commit-mode", default="sync", choices=["sync", "async"])
    lc.add_argument("--dir", default=".local-cluster", help="data folder of the local cluster")
    lc.add_argument("--dim", type=int, default=768, help="VECTOR_DIMENSION")
    lc.add_argument("--port", type=int, default=50051, help="first gRPC port to try")
    lc.add_argument("--no-sample", action="store_true", help="do not write sample data")
    lc.add_argument("--prometheus", action="store_true",
                    help="also start Prometheus (on PATH) scraping the nodes with the alert rules; down stops it")
    lc.set_defaults(func=_local)
    bk = sub.add_parser("backup", help="online, consistent backup of a node's state (leader or replica)")
    bk.add_argument("--node", required=True, help="host:port of any node of the shard")
    bk.add_argument("--out", required=True, help="a folder (made if missing) that gets storage.dat and manifest.json; "
                    "a name ending in .dat or .snap is one bare snapshot file instead")
    bk.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    bk.add_argument("--no-digest", action="store_true", help="skip computing the state digest (saves memory)")
    bk.add_argument("--quiet", action="store_true", help="no progress bar")
    bk.set_defaults(func=_backup)
    rs = sub.add_parser("restore", help="build a node's data folder from a backup")
    rs.add_argument("--from", dest="source", required=True, help="backup file or folder")
    rs.add_argument("--data-dir", required=True, help="the new node's STORAGE_PATH")
    rs.add_argument("--force", action="store_true", help="replace the node files of a non-empty folder")
    rs.add_argument("--quiet", action="store_true", help="no progress bar")
    rs.set_defaults(func=_restore)
    ce = sub.add_parser("certs", help="make a cluster CA and node/admin/client certificates (mutual TLS with roles)",
                        description="Certificates for mutual TLS with roles (see docs/HA.md, Security). Order: "
                        "create-ca once, then create-node NAME HOST... per node (NAME = its SUTRA_NODE_ID), "
                        "create-admin NAME for operators' tools, create-client NAME for applications and routers.")
    ce.add_argument("action", choices=["create-ca", "create-node", "create-admin", "create-client", "list"])
    ce.add_argument("name", nargs="?", help="node id (create-node) or the admin's / client's name")
    ce.add_argument("hosts", nargs="*", help="DNS names and IPs the node is reached at (default localhost 127.0.0.1)")
    ce.add_argument("--certs-dir", default="certs", help="folder with ca.crt/ca.key and the certificates")
    ce.add_argument("--days", type=int, default=0, help="validity (default 3650 for the CA, 730 otherwise)")
    ce.add_argument("--overwrite", action="store_true", help="create-ca: replace an existing CA")
    _output_flags(ce)
    ce.set_defaults(func=_certs)
    from sutra_cluster.sharding import reshard  # reshard [run|status|abort] --to S (sharding/reshard.py)

    reshard.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    import grpc

    from sutra_cluster.failover.coordinator import CoordinatorUnavailable

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (CoordinatorUnavailable, ConfigError, RuntimeError, TimeoutError) as exc:
        print(f"sutra-cluster {args.command}: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"sutra-cluster {args.command}: {exc.code().name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
