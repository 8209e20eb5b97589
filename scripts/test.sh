#!/usr/bin/env bash
# Set up the environment and run the whole test suite (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The browser tests screenshot the MLflow and Prefect UIs in headless Chromium (Debian's package):
# installed here when missing, so a fresh machine runs them instead of skipping them.
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "test: installing Debian's chromium for tests/test_browser.py"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "test: chromium is missing and cannot be installed here (not root): the browser tests will skip" >&2
    fi
fi
# Tests must never reach a model hub or a telemetry endpoint.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1
# Two workers (pytest-xdist), one test file each at a time: the suite's tiny runs are mostly
# single-threaded, so both cores work; a file's module fixtures (a tiny pipeline run) stay shared
# within it. Files go out in collection order, the longest first (tests/conftest.py), not
# xdist's most-tests-first. RELBUDGET_TEST_WORKERS=0 runs everything in this process.
.venv/bin/python -m pytest -m "not vllm" -n "${RELBUDGET_TEST_WORKERS:-2}" --dist loadfile \
    --no-loadscope-reorder "$@"
