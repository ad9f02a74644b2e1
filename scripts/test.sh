#!/usr/bin/env bash
# The test command: setup, lint, then the whole suite (kept under 15 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=${PYTHON:-python3}
"$PY" -m ruff check lossdsl tests examples benchmarks
"$PY" -m pytest tests "$@"
