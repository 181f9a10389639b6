#!/usr/bin/env bash
# One idempotent setup for users, the demo and CI: Debian packages, then a
# virtualenv in .venv holding the project and its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

# openvswitch-switch-dpdk and the DPDK drivers: the lab's DPDK mode, started by
# path; installing it never changes the system's ovs-vswitchd (docs/datapath.rst).
need=(openvswitch-switch iproute2 iputils-ping ethtool tshark procps vagrant chromium chromium-driver openssl util-linux
      etcd-server etcd-client
      openvswitch-switch-dpdk librte-mempool-ring23 librte-bus-vdev23 librte-net-af-packet23)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  # Keep the package's own init scripts from starting a system-wide OVS:
  # the project starts its own daemons in private run directories.
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    made_policy=1
  fi
  echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
  [ "$made_policy" = 1 ] && $SUDO rm -f "$policy"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
echo "install: ok (.venv ready, Open vSwitch $(ovs-vswitchd --version | head -1 | awk '{print $NF}'))"
