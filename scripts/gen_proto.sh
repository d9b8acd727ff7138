#!/usr/bin/env bash
# Regenerates the Python stubs in sutra_cluster/pb/ from proto/. The test
# tests/test_proto_stubs.py fails when the committed stubs no longer match.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
py="${PYTHON:-.venv/bin/python}"
"$py" -m grpc_tools.protoc -Isutra_cluster/pb=proto \
  --python_out="$out" --grpc_python_out="$out" --pyi_out="$out" \
  proto/*.proto
