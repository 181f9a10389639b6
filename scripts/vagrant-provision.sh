#!/usr/bin/env bash
# Provision one Vagrant box as one hypervisor of configs/vagrant.toml:
# the same install script CI runs, then the testbed's whole-host mode
# (`python -m lab.scenario host`) as a systemd service.
#   usage: vagrant-provision.sh <bridge label / datapath ID> <nic> [--serve]
set -euo pipefail
cd "$(dirname "$0")/.."
bridge=$1 nic=$2 serve=${3:-}
bash scripts/install.sh
systemctl stop lisp-host 2>/dev/null || true
systemctl reset-failed lisp-host 2>/dev/null || true
systemd-run --unit lisp-host --working-directory "$PWD" \
  "$PWD/.venv/bin/python" -m lab.scenario host \
  -c "$PWD/configs/vagrant.toml" --bridge "$bridge" --nic "$nic" $serve
for _ in $(seq 120); do
  journalctl -u lisp-host --no-pager | grep -q '^.*ready$' && { journalctl -u lisp-host --no-pager | tail -n 20; exit 0; }
  sleep 1
done
journalctl -u lisp-host --no-pager | tail -n 50
echo "lisp-host did not become ready" >&2
exit 1
