#!/usr/bin/env bash
# Set everything up, then run the two-hypervisor demo (needs root: it
# creates network namespaces and runs its own Open vSwitch daemons).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m lab.demo "$@"
