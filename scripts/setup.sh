#!/usr/bin/env bash
# Installs lossdsl (editable) and its test tools into the current Python, reusing an installed torch.
# A plain `pip install torch` would pull gigabytes of CUDA wheels; on these machines torch==2.13.0 is a
# local CPU build, so we ask for exactly that when no torch is present.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".[test,examples]"
