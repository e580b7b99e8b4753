#!/usr/bin/env bash
# The whole test suite: lint, then pytest (pure tests and namespace tests).
# Extra arguments go to pytest, e.g. `bash tools/test.sh -k epoch -x`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/tools/bootstrap.sh"
cd "$repo"
.venv/bin/ruff check colonet tests tools
.venv/bin/ruff format --check colonet tests tools
exec .venv/bin/python -m pytest "$@"
