#!/usr/bin/env bash
# colonet's main job: the end-to-end demo, in namespaces it builds and removes.
# Extra arguments go to `colonet demo`, e.g. `bash tools/demo.sh --duration 10`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/tools/bootstrap.sh"
exec "$repo/.venv/bin/colonet" demo "$@"
