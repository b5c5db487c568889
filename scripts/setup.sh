#!/usr/bin/env bash
# Create .venv (once) and install gptforge into it; `scripts/setup.sh dev` adds the test tools.
#
# torch is installed first and only where none is present: a CPU build on machines without a GPU
# (GPTFORGE_TORCH, default torch==2.13.0), the default (CUDA) build where nvidia-smi sees a GPU,
# so the `torch>=2.9` requirement never pulls a multi-GB CUDA build onto a CPU-only machine.
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

# install only when pyproject.toml changed since the last install into this .venv, or an asked-for extra's
# requirements are not all there; extras accumulate (`setup.sh serve` after `setup.sh dev` keeps dev's)
stamp=".venv/.gptforge-installed"
installed_hash="" installed_extras=""
if [ -f "$stamp" ]; then read -r installed_hash installed_extras < "$stamp" || true; fi
installed_extras=${installed_extras#.[}  # stamps of earlier versions: ".[dev]"
installed_extras=${installed_extras%]}
want_hash=$(sha256sum pyproject.toml | cut -c1-16)
satisfied() {  # are gptforge's requirements, with these extras, all installed at fitting versions?
  "$py" - "$1" >/dev/null 2>&1 <<'EOF'
import sys
from importlib import metadata

from packaging.requirements import Requirement

wanted, seen = {e for e in sys.argv[1].split(",") if e}, set()
while True:
    for line in metadata.requires("gptforge") or []:
        req = Requirement(line)
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in wanted):
            continue
        if req.name == "gptforge":  # one extra naming another, e.g. dev -> gptforge[serve]
            wanted |= req.extras
        elif not req.specifier.contains(metadata.version(req.name), prereleases=True):
            sys.exit(1)
    if wanted == seen:
        break
    seen = set(wanted)
EOF
}
extras_csv=$(printf '%s\n' ${installed_extras//,/ } ${extras//,/ } | sed '/^$/d' | sort -u | paste -sd, -)
if [ "$installed_hash" != "$want_hash" ] || ! satisfied "$extras"; then
  target="."
  [ -n "$extras_csv" ] && target=".[$extras_csv]"
  echo "gptforge setup: installing gptforge${extras_csv:+ with [$extras_csv]} and its dependencies"
  "${pip[@]}" -e "$target"
  echo "$want_hash $extras_csv" > "$stamp"
fi
echo "gptforge setup: ready ($("$py" -c 'import torch; print("torch", torch.__version__)'))"
