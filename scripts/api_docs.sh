#!/usr/bin/env bash
# Generates the client's API reference (HTML, from the docstrings) with pdoc.
# Usage: scripts/api_docs.sh [OUT_DIR]   (default docs/api; open OUT_DIR/sutra_cluster/client.html)
# tests/test_examples.py runs it, so a docstring that breaks generation fails the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/api}"
py="${PYTHON:-.venv/bin/python}"
"$py" -m pdoc --docformat markdown --no-search -o "$out" \
  sutra_cluster.client sutra_cluster.client.aio sutra_cluster.client.types \
  sutra_cluster.client.options
echo "API reference in $out/sutra_cluster/client.html"
