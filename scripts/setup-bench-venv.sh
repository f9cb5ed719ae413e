#!/usr/bin/env bash
# Create .venv-bench/ with PyTorch + transformers, used only to measure the PyTorch side of
# the benchmarks (bench --pytorch) and to check exported checkpoints load in transformers.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$ROOT/.venv-bench"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -c "import torch, transformers, psutil" 2>/dev/null && exit 0
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet torch transformers safetensors psutil
"$VENV/bin/python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
