#!/usr/bin/env bash
# Set up .venv with the test tools (once), lint, and run the whole test suite; arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/setup.sh dev
# lint is part of the tests: style, import order and the import boundary (models know nothing of distribution)
.venv/bin/ruff check src scripts tests
.venv/bin/ruff format --check --quiet src scripts tests
# two workers (pytest-xdist), each test file on one of them so that its shared fixtures are built once:
# most tests wait on subprocesses, and a second worker fills the cores they leave idle
exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
