"""Settings validation (config.load): every bad setting is reported, one line
each, in a single ConfigError, and the failover timing invariants are checked
when the settings load (issue 4; house style: "timing invariants are checked
when config loads")."""

from __future__ import annotations

from pathlib import Path

import pytest

from sutra_cluster.config import Config, load, timing_problems
from sutra_cluster.errors import ConfigError

BASE = {"SUTRA_NODE_ID": "n1"}  # never fall back to this machine's host name


def problems(env: dict[str, str]) -> list[str]:
    """The lines of the ConfigError that loading ``env`` raises."""
    with pytest.raises(ConfigError) as exc:
        load({**BASE, **env})
    text = str(exc.value)
    head, _, rest = text.partition("\n")
    assert head == "invalid settings:"
    lines = rest.split("\n")
    assert all(line.startswith("  ") for line in lines), text
    return [line[2:] for line in lines]


# --------------------------------------------------------------------------- good settings


def test_defaults_load_and_satisfy_the_timing_invariants() -> None:
    cfg = load(dict(BASE))
    assert cfg == Config(node_id="n1")
    assert timing_problems(cfg) == []
    assert (cfg.lease_ttl_s, cfg.loop_wait_ms, cfg.retry_timeout_ms, cfg.fence_margin_ms) == (2, 100, 250, 500)


def test_values_are_trimmed_case_folded_and_underscores_allowed() -> None:
    cfg = load({**BASE, "SUTRA_COMMIT_MODE": " SYNC ", "SUTRA_WAL_FSYNC": "Off", "SUTRA_WAL_SEGMENT_BYTES": "1_048_576",
                "SUTRA_REPLICAS": "a:1, b:2,", "SUTRA_NODE_ROLE": "Replica", "SUTRA_LEADER": "leader-host:50051"})
    assert cfg.commit_mode == "sync" and cfg.wal_fsync is False and cfg.wal_segment_bytes == 1 << 20
    assert cfg.replicas == ("a:1", "b:2") and cfg.role == "replica" and cfg.leader == "leader-host:50051"


def test_blank_values_mean_the_default() -> None:
    assert load({**BASE, "STORAGE_PORT": "  ", "SUTRA_COMMIT_MODE": ""}) == Config(node_id="n1")


def test_address_is_reachable_even_when_listening_on_every_interface() -> None:
    assert Config(host="0.0.0.0", port=7000).address == "127.0.0.1:7000"
    assert Config(host="10.1.2.3", port=7000).address == "10.1.2.3:7000"
    assert Config(host="0.0.0.0", port=7000, advertise="node-a:7000").address == "node-a:7000"


# --------------------------------------------------------------------------- one line per bad setting


@pytest.mark.parametrize(("name", "value", "line"), [
    ("STORAGE_PORT", "http", "STORAGE_PORT='http': not an integer"),
    ("STORAGE_PORT", "70000", "STORAGE_PORT='70000': must be 1..65535"),
    ("STORAGE_PORT", "0", "STORAGE_PORT='0': must be 1..65535"),
    ("SUTRA_NODE_ROLE", "primary", "SUTRA_NODE_ROLE='primary': must be one of leader|replica"),
    ("SUTRA_COMMIT_MODE", "quorum", "SUTRA_COMMIT_MODE='quorum': must be one of async|sync"),
    ("SUTRA_LOG_LEVEL", "loud", "SUTRA_LOG_LEVEL='loud': must be one of debug|info|warning|error"),
    ("SUTRA_LOG_FORMAT", "xml", "SUTRA_LOG_FORMAT='xml': must be one of text|json"),
    ("SUTRA_WAL_FSYNC", "maybe", "SUTRA_WAL_FSYNC='maybe': must be on|off"),
    ("SUTRA_REPLICAS", "a:1,b", "SUTRA_REPLICAS='a:1,b': 'b' is not host:port"),
    ("SUTRA_REPLICAS", "a:0", "SUTRA_REPLICAS='a:0': 'a:0' is not host:port"),
    ("SUTRA_ETCD_ENDPOINTS", ":2379", "SUTRA_ETCD_ENDPOINTS=':2379': ':2379' is not host:port"),
    ("SUTRA_LEADER", "leader", "SUTRA_LEADER='leader': 'leader' is not host:port"),
    ("SUTRA_SYNC_REPLICAS", "0", "SUTRA_SYNC_REPLICAS='0': must be 1..16"),
    ("SUTRA_LEASE_TTL_S", "0", "SUTRA_LEASE_TTL_S='0': must be 1..600"),
    ("SUTRA_LOOP_WAIT_MS", "5", "SUTRA_LOOP_WAIT_MS='5': must be 10..600000"),
    ("SUTRA_FENCE_MARGIN_MS", "-1", "SUTRA_FENCE_MARGIN_MS='-1': must be 0..600000"),
    ("SUTRA_MAX_LAG_ON_FAILOVER", "lots", "SUTRA_MAX_LAG_ON_FAILOVER='lots': not an integer"),
])
def test_each_bad_setting_gives_exactly_one_line_naming_it(name: str, value: str, line: str) -> None:
    assert problems({name: value}) == [line]


def test_every_bad_setting_is_reported_in_one_pass() -> None:
    got = problems({
        "STORAGE_PORT": "x", "SUTRA_COMMIT_MODE": "quorum", "SUTRA_WAL_FSYNC": "maybe",
        "SUTRA_REPLICAS": "nope", "SUTRA_LOOP_WAIT_MS": "1600", "SUTRA_TLS_CERT": "", "SUTRA_TLS_KEY": "",
    })
    assert got == [
        "STORAGE_PORT='x': not an integer",
        "SUTRA_WAL_FSYNC='maybe': must be on|off",
        "SUTRA_REPLICAS='nope': 'nope' is not host:port",
        "SUTRA_COMMIT_MODE='quorum': must be one of async|sync",
        ("SUTRA_LOOP_WAIT_MS + 2 * SUTRA_RETRY_TIMEOUT_MS (1600 + 2 * 250) must be <= SUTRA_LEASE_TTL_S (2000 ms), "
         "or a leader could lose its key between two renewals"),
        FENCE_LINE.format(w=1600, r=250, f=1500),
    ]


# --------------------------------------------------------------------------- timing invariants


def test_loop_wait_plus_two_retries_must_fit_in_the_ttl() -> None:
    got = problems({"SUTRA_LOOP_WAIT_MS": "500", "SUTRA_RETRY_TIMEOUT_MS": "800"})
    assert got[0] == ("SUTRA_LOOP_WAIT_MS + 2 * SUTRA_RETRY_TIMEOUT_MS (500 + 2 * 800) must be <= SUTRA_LEASE_TTL_S "
                      "(2000 ms), or a leader could lose its key between two renewals")
    # Six such calls in one tick do not fit before the leader's own fence deadline either.
    assert got[1] == FENCE_LINE.format(w=500, r=800, f=1500)


FENCE_LINE = ("max(SUTRA_LOOP_WAIT_MS, 6 * SUTRA_RETRY_TIMEOUT_MS) ({w}, 6 * {r}) must be <= SUTRA_LEASE_TTL_S - "
              "SUTRA_FENCE_MARGIN_MS ({f} ms): a leader's tick makes up to 6 etcd calls, and a slow but healthy etcd "
              "would otherwise make a healthy leader fence itself between two renewals")


def test_a_leader_tick_of_six_slow_calls_exactly_at_the_fence_deadline_is_allowed() -> None:
    cfg = load({**BASE, "SUTRA_RETRY_TIMEOUT_MS": "300", "SUTRA_FENCE_MARGIN_MS": "200"})
    assert 6 * cfg.retry_timeout_ms == cfg.lease_ttl_s * 1000 - cfg.fence_margin_ms
    assert problems({"SUTRA_RETRY_TIMEOUT_MS": "301", "SUTRA_FENCE_MARGIN_MS": "200"}) == [
        FENCE_LINE.format(w=100, r=301, f=1800)]


def test_fence_margin_plus_retry_must_stay_below_the_ttl() -> None:
    got = problems({"SUTRA_FENCE_MARGIN_MS": "1900", "SUTRA_RETRY_TIMEOUT_MS": "100"})
    assert "SUTRA_FENCE_MARGIN_MS + SUTRA_RETRY_TIMEOUT_MS (1900 + 100) must be < SUTRA_LEASE_TTL_S (2000 ms)" in got
    assert load({**BASE, "SUTRA_FENCE_MARGIN_MS": "1100", "SUTRA_RETRY_TIMEOUT_MS": "100"}).fence_margin_ms == 1100


def test_every_timing_invariant_reported_together() -> None:
    got = problems({"SUTRA_RETRY_TIMEOUT_MS": "1000", "SUTRA_FENCE_MARGIN_MS": "1000"})
    assert len(got) == 3
    assert got[0].endswith("or a leader could lose its key between two renewals")
    assert got[1] == FENCE_LINE.format(w=100, r=1000, f=1000)
    assert got[2] == "SUTRA_FENCE_MARGIN_MS + SUTRA_RETRY_TIMEOUT_MS (1000 + 1000) must be < SUTRA_LEASE_TTL_S (2000 ms)"


def test_a_longer_ttl_makes_room_for_slower_timings() -> None:
    env = {"SUTRA_LOOP_WAIT_MS": "1000", "SUTRA_RETRY_TIMEOUT_MS": "2000", "SUTRA_FENCE_MARGIN_MS": "1000"}
    assert len(problems(env)) == 3
    cfg = load({**BASE, **env, "SUTRA_LEASE_TTL_S": "14"})
    assert timing_problems(cfg) == []


def test_timing_problems_is_pure_over_a_config() -> None:
    assert timing_problems(Config(lease_ttl_s=1, loop_wait_ms=100, retry_timeout_ms=150, fence_margin_ms=100)) == []
    got = timing_problems(Config(lease_ttl_s=1, loop_wait_ms=101, retry_timeout_ms=450, fence_margin_ms=0))
    assert got[0] == ("SUTRA_LOOP_WAIT_MS + 2 * SUTRA_RETRY_TIMEOUT_MS (101 + 2 * 450) must be <= SUTRA_LEASE_TTL_S "
                      "(1000 ms), or a leader could lose its key between two renewals")


def test_renewal_must_fit_before_the_leaders_own_fence_deadline() -> None:
    # The review's case: 100 + 2 * 400 fits the old two-call check, yet a leader's
    # tick makes six calls; at 0.4 s each, two renewals can be 2.4 s apart while
    # the leader fences itself 1.5 s after the last one.
    got = problems({"SUTRA_RETRY_TIMEOUT_MS": "400"})
    assert got == [FENCE_LINE.format(w=100, r=400, f=1500)]


# --------------------------------------------------------------------------- roles, TLS, shards


def test_replica_without_a_leader() -> None:
    assert problems({"SUTRA_NODE_ROLE": "replica"}) == [
        "SUTRA_LEADER: a replica needs its leader's host:port (or SUTRA_ETCD_ENDPOINTS)",
    ]


def test_replica_with_a_leader_or_etcd_is_fine() -> None:
    assert load({**BASE, "SUTRA_NODE_ROLE": "replica", "SUTRA_LEADER": "l:1"}).leader == "l:1"
    cfg = load({**BASE, "SUTRA_NODE_ROLE": "replica", "SUTRA_ETCD_ENDPOINTS": "e1:2379,e2:2379"})
    assert cfg.etcd_endpoints == ("e1:2379", "e2:2379") and cfg.leader == ""


def test_replica_with_a_malformed_leader_gets_both_lines() -> None:
    assert problems({"SUTRA_NODE_ROLE": "replica", "SUTRA_LEADER": "nope"}) == [
        "SUTRA_LEADER='nope': 'nope' is not host:port",
        "SUTRA_LEADER: a replica needs its leader's host:port (or SUTRA_ETCD_ENDPOINTS)",
    ]


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, str]:
    files = {}
    for name in ("cert", "key", "ca"):
        p = tmp_path / f"{name}.pem"
        p.write_text("-----BEGIN PLACEHOLDER-----\n")
        files[name] = str(p)
    return files


def test_tls_cert_without_key(pem: dict[str, str]) -> None:
    assert problems({"SUTRA_TLS_CERT": pem["cert"]}) == ["SUTRA_TLS_CERT/SUTRA_TLS_KEY: set both or neither"]


def test_tls_key_without_cert(pem: dict[str, str]) -> None:
    assert problems({"SUTRA_TLS_KEY": pem["key"]}) == ["SUTRA_TLS_CERT/SUTRA_TLS_KEY: set both or neither"]


def test_tls_files_must_exist(pem: dict[str, str], tmp_path: Path) -> None:
    missing = str(tmp_path / "absent.pem")
    assert problems({"SUTRA_TLS_CERT": pem["cert"], "SUTRA_TLS_KEY": missing, "SUTRA_TLS_CA": missing}) == [
        f"SUTRA_TLS_KEY={missing!r}: no such file",
        f"SUTRA_TLS_CA={missing!r}: no such file",
    ]


def test_tls_cert_and_key_together_load(pem: dict[str, str]) -> None:
    cfg = load({**BASE, "SUTRA_TLS_CERT": pem["cert"], "SUTRA_TLS_KEY": pem["key"], "SUTRA_TLS_CA": pem["ca"]})
    assert (cfg.tls_cert, cfg.tls_key, cfg.tls_ca) == (pem["cert"], pem["key"], pem["ca"])


def test_shard_must_be_below_the_shard_count() -> None:
    assert problems({"SUTRA_SHARD": "4", "SUTRA_SHARDS": "4"}) == [
        "SUTRA_SHARD=4: SUTRA_SHARDS is 4, so shards are 0..3",
    ]
    assert load({**BASE, "SUTRA_SHARD": "3", "SUTRA_SHARDS": "4"}).shard == 3


# ---- security review 2026-12-01: H5, M6, M7 and the stream bounds ----------------
def test_tls_ca_without_a_certificate_refuses_to_start(pem: dict[str, str]) -> None:
    # It used to start silently in plaintext (H5).
    assert problems({"SUTRA_TLS_CA": pem["ca"]}) == [
        "SUTRA_TLS_CA: set SUTRA_TLS_CERT and SUTRA_TLS_KEY too; a CA alone would serve plaintext"]


def test_etcd_endpoints_accept_the_http_url_form_and_refuse_other_schemes() -> None:
    cfg = load({**BASE, "SUTRA_ETCD_ENDPOINTS": "http://10.0.0.1:2379/, 10.0.0.2:2379"})
    assert cfg.etcd_endpoints == ("10.0.0.1:2379", "10.0.0.2:2379")
    assert problems({"SUTRA_ETCD_ENDPOINTS": "unix://etcd.sock"}) == [
        "SUTRA_ETCD_ENDPOINTS='unix://etcd.sock': 'unix://etcd.sock': give host:port or http://host:port"]


def test_metrics_port_must_differ_from_the_storage_port() -> None:
    assert problems({"STORAGE_PORT": "50051", "SUTRA_METRICS_PORT": "50051"}) == [
        "SUTRA_METRICS_PORT=50051: STORAGE_PORT is the same port; pick another"]


def test_stream_bounds_default_from_the_workers_and_leave_two_free() -> None:
    for workers in (4, 5, 8, 32, 1024):
        cfg = load({**BASE, "SUTRA_GRPC_WORKERS": str(workers)})
        assert cfg.max_streams + cfg.max_node_streams <= workers - 2
        assert 1 <= cfg.max_streams_per_client <= cfg.max_streams
    cfg = load(BASE)
    assert (cfg.grpc_workers, cfg.max_streams, cfg.max_node_streams, cfg.max_streams_per_client) == (32, 16, 8, 8)
    assert problems({"SUTRA_MAX_STREAMS": "40"}) == [
        "SUTRA_MAX_STREAMS + SUTRA_MAX_NODE_STREAMS (40 + 8) must be <= SUTRA_GRPC_WORKERS - 2 (30), "
        "or long calls could take every worker"]


def test_log_format_defaults_to_text_and_takes_json() -> None:
    assert load({}).log_format == "text"
    assert load({"SUTRA_LOG_FORMAT": " JSON "}).log_format == "json"


def test_the_router_reads_the_same_log_format_and_a_metrics_port() -> None:
    from sutra_cluster.sharding import router

    base = {"SUTRA_SHARD_MAP": "", "SUTRA_ETCD_ENDPOINTS": "127.0.0.1:2379"}
    cfg = router.load_config({**base, "SUTRA_LOG_FORMAT": "json", "SUTRA_METRICS_PORT": "9094"})
    assert (cfg.log_format, cfg.metrics_port) == ("json", 9094)
    with pytest.raises(ConfigError, match="SUTRA_LOG_FORMAT='yaml': must be one of text|json"):
        router.load_config({**base, "SUTRA_LOG_FORMAT": "yaml"})
    with pytest.raises(ConfigError, match="SUTRA_METRICS_PORT=50051: the router's gRPC port is the same port"):
        router.load_config({**base, "SUTRA_ROUTER_PORT": "50051", "SUTRA_METRICS_PORT": "50051"})
