#!/usr/bin/env bash
# Set up .venv with the test tools (once) and run the whole test suite; arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/setup.sh dev
exec .venv/bin/python -m pytest "$@"
