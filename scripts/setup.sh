#!/usr/bin/env bash
# Create .venv (once) and install gptforge into it; `scripts/setup.sh dev` adds the test tools.
#
# torch is installed first and only where none is present: a CPU build on machines without a GPU
# (GPTFORGE_TORCH, default torch==2.13.0), the default (CUDA) build where nvidia-smi sees a GPU,
# so the `torch>=2.4` requirement never pulls a multi-GB CUDA build onto a CPU-only machine.
# Elsewhere, point pip at PyTorch's CPU wheels, e.g.
#   GPTFORGE_TORCH="torch --index-url https://download.pytorch.org/whl/cpu" scripts/setup.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
extras=${1:-}

if [ ! -x .venv/bin/python ]; then
  echo "gptforge setup: creating .venv"
  "${PYTHON:-python3}" -m venv .venv
fi
py=.venv/bin/python
pip=("$py" -m pip install -q --disable-pip-version-check)

if ! "$py" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "gptforge setup: installing torch (CUDA build: a GPU is present)"
    "${pip[@]}" torch
  else
    echo "gptforge setup: installing torch (CPU build: no GPU found)"
    # shellcheck disable=SC2086 - GPTFORGE_TORCH may carry pip options
    "${pip[@]}" ${GPTFORGE_TORCH:-torch==2.13.0}
  fi
fi

# reinstall only when pyproject.toml or the extras changed since the last install into this .venv
target="."
[ -n "$extras" ] && target=".[$extras]"
stamp=".venv/.gptforge-installed"
want="$(sha256sum pyproject.toml | cut -c1-16) $target"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "gptforge setup: installing gptforge${extras:+ with [$extras]} and its dependencies"
  "${pip[@]}" -e "$target"
  echo "$want" > "$stamp"
fi
echo "gptforge setup: ready ($("$py" -c 'import torch; print("torch", torch.__version__)'))"
