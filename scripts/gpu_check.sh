#!/usr/bin/env bash
# The GPU check: one markdown table of what only a GPU shows (docs/PERFORMANCE.md, "GPU").
#   scripts/gpu_check.sh                 one GPU, a few minutes including compilation; writes gpu_check.md
#   scripts/gpu_check.sh --tiny          the same check on a CPU with tiny models (the test suite runs it)
#   scripts/gpu_check.sh --out FILE      where the table is written as well as printed
# It runs in one torchrun process, so that the FSDP2 check has a process group; the strategy checks
# start torchrun runs of their own. On an offline GPU machine, run ../shared/tools/device-wheels.sh in
# the checkout first, and begin the command there with the two lines it prints.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
exec "$py" -m torch.distributed.run --standalone --nproc_per_node=1 scripts/benchmark.py gpu "$@"
