#!/usr/bin/env bash
# Set everything up, then run the benchmark (needs root: namespaces and its
# own Open vSwitch). Arguments go to bench/run.py (--help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python bench/run.py "$@"
