#!/usr/bin/env bash
# The test suite: installs what is missing (setup.sh), then runs every test, lint and type
# check. Extra arguments go to pytest (e.g. ./test.sh -m "not slow" for the fast subset).
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh --tests
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/pytest "$@"
