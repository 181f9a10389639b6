#!/usr/bin/env bash
# Set everything up, then run the whole test suite (needs root: the tests
# build network namespaces with their own Open vSwitch daemons).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest "$@"
