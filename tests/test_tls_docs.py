"""docs/HA.md's "Server TLS with your own certificate" recipe, run as written: its openssl
line makes the certificate, a node serves it, and the handbook's grpcurl line and Python
snippet reach the node by IP (only the port differs). The original guide's CN-only
certificate is refused by grpcurl, which is why the recipe exists."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import ROOT, NodeProcess, tool, wait_for

pytestmark = pytest.mark.slow  # starts a node, runs openssl and grpcurl


def _handbook_tls_section() -> str:
    text = (ROOT / "docs" / "HA.md").read_text()
    start = text.index("**Server TLS with your own certificate, and the client side.**")
    return text[start:text.index("**Protected mode.**", start)]


def _blocks(section: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)


def _commands(block: str) -> list[str]:
    """Shell lines of a block, continuations joined, comment-only lines dropped."""
    joined = block.replace("\\\n", " ")
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_handbook_tls_recipe_works_verbatim(tmp_path: Path, node_factory: Callable[..., NodeProcess]) -> None:
    section = _handbook_tls_section()
    shell = _commands(_blocks(section, "bash")[0])
    openssl = next(c for c in shell if c.startswith("openssl req -x509"))
    r = subprocess.run(["bash", "-c", openssl], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    san = subprocess.run(["openssl", "x509", "-in", "server-cert.pem", "-noout", "-ext", "subjectAltName"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert "IP Address:127.0.0.1" in san.stdout and "DNS:localhost" in san.stdout, san.stdout + san.stderr

    node = node_factory("tls", env={"SUTRA_TLS_CERT": str(tmp_path / "server-cert.pem"),
                                    "SUTRA_TLS_KEY": str(tmp_path / "server-key.pem")}, start=False)
    node.start(wait=False)
    port = str(node.port)

    # The grpcurl line, with the handbook's grpcurl spelled as the path ./dev installs it at.
    line = next(c for c in shell if c.startswith("grpcurl -cacert server-cert.pem"))
    cmd = line.split("  #")[0].replace("grpcurl", tool("grpcurl"), 1).replace(":50051", f":{port}")

    def grpcurl_lists() -> bool:
        out = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, capture_output=True, text=True, timeout=30)
        return out.returncode == 0 and "sutra.storage.StorageService" in out.stdout

    wait_for(grpcurl_lists, 60, f"`{cmd}` to list the services over TLS")

    # The Python snippet, run as a script (the node's port in place of 50051).
    snippet = _blocks(section, "python")[0].replace(":50051", f":{port}")
    script = tmp_path / "snippet.py"
    script.write_text(snippet)
    py = subprocess.run([tool("python"), str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    # SutraClient.health() returns the Health dataclass (issue 14), printed as its repr.
    assert py.returncode == 0 and "healthy=True" in py.stdout, py.stdout + py.stderr

    # The original guide's CN-only certificate: a node serves it, and grpcurl refuses it by name.
    cn_only = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", "cn-key.pem",
         "-out", "cn-cert.pem", "-subj", "/CN=localhost"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert cn_only.returncode == 0, cn_only.stderr
    old = node_factory("cn-only", env={"SUTRA_TLS_CERT": str(tmp_path / "cn-cert.pem"),
                                       "SUTRA_TLS_KEY": str(tmp_path / "cn-key.pem")}, start=False)
    old.start(wait=False)

    def refused_by_name() -> str:
        out = subprocess.run([tool("grpcurl"), "-cacert", "cn-cert.pem", f"localhost:{old.port}", "list"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert out.returncode != 0, out.stdout
        return "Common Name" in out.stderr and out.stderr  # "connection refused" until the node listens

    wait_for(refused_by_name, 60, "grpcurl to refuse the CN-only certificate")
