"""deploy/k8s, checked without a Kubernetes cluster (none can run here).

- Every manifest, and the TLS overlay as ``kubectl apply -k deploy/k8s/tls``
  would render it (``tls()`` applies its JSON6902 patches; its output was
  compared once with ``kubectl kustomize`` 5.5, documents identical), is validated against the Kubernetes OpenAPI schema that the
  kubernetes-validate package ships, in strict mode (an unknown or misspelled
  field fails), for the oldest release with GA gRPC probes and the newest the
  package knows.
- What a schema cannot see: every environment variable is a setting the code
  reads; headless Services, StatefulSets, PodDisruptionBudgets and the router's
  Service select what they should; shard numbers, advertised names, probe ports
  and etcd endpoints agree; pods run as the Dockerfile's numeric USER; secrets
  are mounted where the settings point.
- The TLS overlay's exec probe, run verbatim against a real node serving TLS
  with a certificate made by the openssl command docs/HA.md gives.
"""

from __future__ import annotations

import ast
import copy
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.helpers import ROOT, VENV_BIN, NodeProcess, free_port, wait_for

K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
# gRPC probes are GA from Kubernetes 1.27; also the newest schema the package ships.
VERSIONS = ("1.27", kubernetes_validate.latest_version())
SETTING = re.compile(r"^(SUTRA|STORAGE|RECONCILE|MEMORY|VECTOR)_[A-Z0-9_]+$")
WORKLOADS = ("StatefulSet", "Deployment")

Doc = dict[str, Any]


# ---- loading and rendering ---------------------------------------------------
def kustomization(folder: Path) -> Doc:
    return dict(yaml.safe_load((folder / "kustomization.yaml").read_text()))


def base() -> list[Doc]:
    """The documents of deploy/k8s/base, from the files its kustomization lists
    (deploy/k8s itself is base/ as it is; kustomize refuses an overlay nested
    inside its base, so the TLS overlay is base's sibling)."""
    assert kustomization(K8S) == {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                                  "resources": ["base"]}
    files = kustomization(BASE)["resources"]
    on_disk = sorted(p.name for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(files) == on_disk, f"base/kustomization.yaml lists {files}, the folder has {on_disk}"
    return [d for f in files for d in yaml.safe_load_all((BASE / f).read_text()) if d]


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def json_patch(doc: Doc, ops: list[Doc]) -> None:
    """RFC 6902 add/replace/remove, as kustomize applies a JSON6902 patch. A
    replace of a missing member fails, as in kustomize."""
    for op in ops:
        *parents, last = _pointer(op["path"])
        node: Any = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if op["op"] == "add" and isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), copy.deepcopy(op["value"]))
        elif op["op"] in ("add", "replace"):
            assert op["op"] == "add" or (int(last) < len(node) if isinstance(node, list) else last in node), \
                f"replace of {op['path']}, which does not exist"
            node[int(last) if isinstance(node, list) else last] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
        else:
            raise AssertionError(f"op {op['op']} is not used here")


def _targets(doc: Doc, target: Doc) -> bool:
    labels = doc["metadata"].get("labels", {})
    selector = dict(s.split("=", 1) for s in target.get("labelSelector", "").split(",") if s)
    name = doc["metadata"]["name"]
    return (doc["kind"] == target.get("kind", doc["kind"]) and name == target.get("name", name)
            and all(labels.get(k) == v for k, v in selector.items()))


def tls() -> list[Doc]:
    """deploy/k8s/tls rendered: the base with the overlay's JSON6902 patches applied."""
    k = kustomization(K8S / "tls")
    assert k["resources"] == ["../base"], k["resources"]
    assert set(k) <= {"apiVersion", "kind", "resources", "patches"}, "the overlay uses only JSON6902 patches"
    docs = base()
    for p in k["patches"]:
        hit = [d for d in docs if _targets(d, p["target"])]
        assert hit, f"patch target {p['target']} matches nothing"
        for d in hit:
            json_patch(d, yaml.safe_load(p["patch"]))
    return docs


def by_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def pod_specs(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    for d in docs:
        if d["kind"] in WORKLOADS:
            yield d, d["spec"]["template"]["spec"]


def env_of(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def value(container: Doc, name: str) -> str:
    return str(env_of(container)[name]["value"])


def shard_sets(docs: list[Doc]) -> list[Doc]:
    return [d for d in by_kind(docs, "StatefulSet") if d["spec"]["template"]["spec"]["containers"][0]["command"]
            == ["sutra-cluster", "serve"]]


def router(docs: list[Doc]) -> Doc:
    (r,) = [d for d in by_kind(docs, "Deployment") if d["spec"]["template"]["spec"]["containers"][0]["command"]
            == ["sutra-cluster", "router"]]
    return r


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ---- the schema ---------------------------------------------------------------
def _schema_errors(doc: Doc) -> list[str]:
    out = []
    for v in VERSIONS:
        try:
            kubernetes_validate.validate(doc, v, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            out.append(f"{doc['kind']}/{doc['metadata']['name']} (k8s {v}) at {path}: {exc.message}")
    return out


def test_every_manifest_validates_against_the_kubernetes_schema() -> None:
    docs = base() + tls()
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == ["Deployment", "PodDisruptionBudget", "Service", "StatefulSet"], kinds
    errors = [e for d in docs for e in _schema_errors(d)]
    assert not errors, "\n".join(errors)
    # The validator is strict: a misspelled field and a wrong type both fail.
    bad = copy.deepcopy(shard_sets(docs)[0])
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 50051
    assert _schema_errors(bad)
    bad = copy.deepcopy(router(base()))
    bad["spec"]["replicas"] = "two"
    assert _schema_errors(bad)


# ---- what the schema cannot check ---------------------------------------------
def settings_the_code_reads() -> set[str]:
    """Environment names the package reads: string constants of the settings'
    form given to a call (env.get, _Reader.integer, ...) or used as a subscript."""
    names: set[str] = set()
    for path in (ROOT / "sutra_cluster").rglob("*.py"):
        if "pb" in path.relative_to(ROOT / "sutra_cluster").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            args: list[ast.expr] = []
            if isinstance(node, ast.Call):
                args = node.args[:1]
            elif isinstance(node, ast.Subscript):
                args = [node.slice]
            names |= {a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)
                      and SETTING.match(a.value)}
    return names


def test_every_environment_variable_is_a_setting_the_code_reads() -> None:
    known = settings_the_code_reads()
    assert {"SUTRA_ADVERTISE", "STORAGE_PORT", "SUTRA_ROUTER_PORT", "SUTRA_TLS_CERT", "SUTRA_ETCD_CACERT"} <= known
    for docs in (base(), tls()):
        for workload, spec in pod_specs(docs):
            for c in spec["containers"]:
                env = env_of(c)
                text = " ".join(str(e.get("value", "")) for e in env.values()) + " ".join(c.get("command", []))
                for name, e in env.items():
                    where = f"{workload['metadata']['name']}/{c['name']} {name}"
                    if SETTING.match(name):
                        assert name in known, f"{where}: no code reads this setting"
                    else:  # a downward-API helper, only there to build a setting's value
                        assert "fieldRef" in e.get("valueFrom", {}) and f"$({name})" in text, \
                            f"{where}: neither a setting nor a helper another value uses"
                # Kubernetes expands $(NAME) only for variables defined earlier in the list.
                order = list(env)
                for i, (name, e) in enumerate(env.items()):
                    for ref in re.findall(r"\$\((\w+)\)", str(e.get("value", ""))):
                        assert ref in order[:i], f"{where}: $({ref}) is not defined before {name}"
            # Service links would inject <SERVICE>_PORT: sutra-router's is SUTRA_ROUTER_PORT, a setting.
            assert spec.get("enableServiceLinks") is False, f"{workload['metadata']['name']}: set enableServiceLinks: false"


def test_services_statefulsets_and_disruption_budgets_match() -> None:
    docs = base()
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    workloads = [d for d in docs if d["kind"] in WORKLOADS]
    for sts in by_kind(docs, "StatefulSet"):
        name, labels = sts["metadata"]["name"], sts["spec"]["template"]["metadata"]["labels"]
        svc = services.get(sts["spec"]["serviceName"])
        assert svc is not None, f"{name}: serviceName {sts['spec']['serviceName']} is no Service here"
        assert svc["spec"].get("clusterIP") == "None", f"{name}: its Service must be headless"
        assert svc["spec"].get("publishNotReadyAddresses") is True, f"{name}: members need each other's names early"
        assert selects(svc["spec"]["selector"], labels), f"{name}: its Service selects other pods"
        assert selects(sts["spec"]["selector"]["matchLabels"], labels), f"{name}: selector misses its own pods"
        ports = {p["containerPort"] for c in sts["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert {p["port"] for p in svc["spec"]["ports"]} <= ports, f"{name}: the Service names ports no container has"
    for svc in services.values():
        hits = [w["metadata"]["name"] for w in workloads
                if selects(svc["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])]
        assert len(hits) == 1, f"Service {svc['metadata']['name']} selects {hits}"
    pdbs = by_kind(docs, "PodDisruptionBudget")
    for w in workloads:
        labels = w["spec"]["template"]["metadata"]["labels"]
        mine = [p for p in pdbs if selects(p["spec"]["selector"]["matchLabels"], labels)]
        assert len(mine) == 1, f"{w['metadata']['name']}: {len(mine)} PodDisruptionBudgets"
        assert mine[0]["spec"] == {"maxUnavailable": 1, "selector": mine[0]["spec"]["selector"]}
    for p in pdbs:  # and no budget spans two workloads
        hits = [w for w in workloads if selects(p["spec"]["selector"]["matchLabels"],
                                                  w["spec"]["template"]["metadata"]["labels"])]
        assert len(hits) == 1, f"PDB {p['metadata']['name']} covers {len(hits)} workloads"


def test_shards_advertise_probes_and_etcd_agree() -> None:
    docs = base()
    shards = shard_sets(docs)
    numbers = sorted(int(value(s["spec"]["template"]["spec"]["containers"][0], "SUTRA_SHARD")) for s in shards)
    assert numbers == list(range(len(shards))), f"shard StatefulSets carry SUTRA_SHARD {numbers}"
    (etcd,) = [d for d in by_kind(docs, "StatefulSet") if d["metadata"]["name"] == "etcd"]
    members = [f"etcd-{i}.{etcd['spec']['serviceName']}:2379" for i in range(etcd["spec"]["replicas"])]
    assert len(members) == 3
    r = router(docs)["spec"]["template"]["spec"]["containers"][0]
    assert value(r, "SUTRA_SHARDS") == str(len(shards))
    assert value(r, "SUTRA_ETCD_ENDPOINTS") == ",".join(members)
    rport = int(value(r, "SUTRA_ROUTER_PORT"))
    for probe in ("readinessProbe", "livenessProbe"):
        assert r[probe]["grpc"]["port"] == rport, f"router {probe}"
    for s in shards:
        name, spec = s["metadata"]["name"], s["spec"]["template"]["spec"]
        c = spec["containers"][0]
        env = env_of(c)
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
        port = int(value(c, "STORAGE_PORT"))
        assert value(c, "SUTRA_ADVERTISE") == f"$(POD_NAME).{s['spec']['serviceName']}.$(POD_NAMESPACE).svc:{port}"
        assert value(c, "SUTRA_NODE_ID") == "$(POD_NAME)"
        assert value(c, "SUTRA_SHARDS") == str(len(shards))
        assert value(c, "SUTRA_ETCD_ENDPOINTS") == ",".join(members)
        assert value(c, "SUTRA_COMMIT_MODE") == "sync" and s["spec"]["replicas"] == 3
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == port, f"{name} {probe}"
        ports = {p["containerPort"] for p in c["ports"]}
        assert {port, int(value(c, "SUTRA_METRICS_PORT"))} <= ports
        data = value(c, "STORAGE_PATH")
        assert any(m["mountPath"] == data and m["name"] == "data" for m in c["volumeMounts"])
        assert [t["metadata"]["name"] for t in s["spec"]["volumeClaimTemplates"]] == ["data"]
        # Longer than the node's own graceful stop (10 s).
        assert spec["terminationGracePeriodSeconds"] > 10
    # shard-N.yaml is shard-0.yaml with the number changed.
    zero = (BASE / "shard-0.yaml").read_text()
    for i in range(1, len(shards)):
        other = (BASE / f"shard-{i}.yaml").read_text()
        assert re.sub(r"shard-\d|shard: \"\d\"|value: \"\d\"|^# Shard \d|\d -> \d", "N", other, flags=re.M) == \
            re.sub(r"shard-\d|shard: \"\d\"|value: \"\d\"|^# Shard \d|\d -> \d", "N", zero, flags=re.M)


def _dockerfile_user() -> tuple[int, int]:
    users = re.findall(r"^USER (\d+):(\d+)$", (ROOT / "deploy" / "Dockerfile").read_text(), re.MULTILINE)
    assert len(users) == 1, users
    return int(users[0][0]), int(users[0][1])


def _mounted(spec: Doc, container: Doc, path: str) -> Doc:
    """The secret volume whose mount holds ``path``."""
    for m in container["volumeMounts"]:
        if path.startswith(m["mountPath"].rstrip("/") + "/"):
            vol = next(v for v in spec["volumes"] if v["name"] == m["name"])
            assert "secret" in vol, f"{path} is mounted from {vol}, not a Secret"
            return dict(vol["secret"])
    raise AssertionError(f"nothing is mounted at {path}")


def test_pods_run_as_the_image_user_with_limits_and_secrets_mounted() -> None:
    uid, gid = _dockerfile_user()
    for docs in (base(), tls()):
        for w, spec in pod_specs(docs):
            name = w["metadata"]["name"]
            sc = spec["securityContext"]
            assert (sc["runAsUser"], sc["runAsGroup"], sc["runAsNonRoot"]) == (uid, gid, True), name
            if w["kind"] == "StatefulSet":  # volumes and mounted secrets readable by the image's group
                assert sc["fsGroup"] == gid, name
            for c in spec["containers"]:
                res = c["resources"]
                assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"], name
                csc = c["securityContext"]
                assert csc["allowPrivilegeEscalation"] is False and csc["capabilities"]["drop"] == ["ALL"], name
                env = env_of(c)
                if "SUTRA_CLUSTER_SECRET_FILE" in env:
                    sec = _mounted(spec, c, value(c, "SUTRA_CLUSTER_SECRET_FILE"))
                    assert sec["secretName"] == "sutra-cluster-secret", name
                for setting in ("SUTRA_TLS_CERT", "SUTRA_TLS_KEY"):
                    if setting in env:
                        sec = _mounted(spec, c, value(c, setting))
                        assert sec["secretName"] == "sutra-tls", name
    # Nodes refuse replication from other pods without the cluster secret (or mTLS).
    for s in shard_sets(base()):
        assert "SUTRA_CLUSTER_SECRET_FILE" in env_of(s["spec"]["template"]["spec"]["containers"][0])
    # Under TLS every node and router serves it, and no native gRPC probe is left (the kubelet's cannot do TLS).
    for w, spec in pod_specs(tls()):
        c = spec["containers"][0]
        if c["command"][0] == "sutra-cluster":
            assert {"SUTRA_TLS_CERT", "SUTRA_TLS_KEY"} <= set(env_of(c)), w["metadata"]["name"]
            probes = [c[p] for p in ("startupProbe", "readinessProbe", "livenessProbe") if p in c]
            assert probes and all("exec" in p for p in probes), w["metadata"]["name"]


# ---- the TLS probe, run for real ------------------------------------------------
def _docs_openssl_line() -> str:
    text = (ROOT / "docs" / "HA.md").read_text()
    section = text[text.index("## Kubernetes"):]
    lines = [ln for ln in section.splitlines() if ln.startswith("openssl req -x509")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.slow
def test_tls_overlay_probe_passes_against_a_tls_node(tmp_path: Path) -> None:
    """The overlay's exec probe, verbatim, against a real node serving the
    certificate docs/HA.md makes, as the pod sutra-shard-0-0 in namespace default."""
    r = subprocess.run(["bash", "-c", _docs_openssl_line()], cwd=tmp_path, env={**os.environ, "NS": "default"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    sts = next(s for s in shard_sets(tls()) if s["metadata"]["name"] == "sutra-shard-0")
    c = sts["spec"]["template"]["spec"]["containers"][0]
    probe = c["readinessProbe"]["exec"]["command"]
    port = free_port()
    advertise = value(c, "SUTRA_ADVERTISE").replace("$(POD_NAME)", "sutra-shard-0-0").replace(
        "$(POD_NAMESPACE)", "default").rpartition(":")[0] + f":{port}"
    env = {"SUTRA_TLS_CERT": str(tmp_path / "tls.crt"), "SUTRA_TLS_KEY": str(tmp_path / "tls.key"),
           "SUTRA_ADVERTISE": advertise, "SUTRA_NODE_ID": "sutra-shard-0-0"}
    node = NodeProcess(tmp_path / "data", env=env, port=port, log_path=tmp_path / "node.log")

    def run_probe(advertised: str) -> subprocess.CompletedProcess[str]:
        penv = {**os.environ, **env, "STORAGE_PORT": str(port), "SUTRA_ADVERTISE": advertised,
                "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # the image has python on PATH
        timeout = int(c["readinessProbe"]["timeoutSeconds"]) + 5
        return subprocess.run(probe, env=penv, capture_output=True, text=True, timeout=timeout)

    try:
        node.start(wait=False)
        wait_for(lambda: run_probe(advertise).returncode == 0, 60, f"the TLS probe to pass: {shlex.join(probe)[:80]}...")
        # The probe verifies the name: a pod of a shard the certificate does not cover fails it.
        bad = run_probe(f"sutra-shard-7-0.sutra-shard-7.default.svc:{port}")
        assert bad.returncode != 0, bad.stdout + bad.stderr
    except AssertionError:
        print(node.log_tail())
        raise
    finally:
        node.stop()
