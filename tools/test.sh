#!/usr/bin/env bash
# The test command of README.md (CI runs exactly this): install test dependencies, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh --test
exec python3 -m pytest -q -ra --durations=15 "$@"
