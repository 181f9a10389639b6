"""The lab's DPDK mode seen from outside: the demo with `--datapath dpdk`
(docs/datapath.rst, "OVS-DPDK"). The core end-to-end tests run on DPDK
through the `testbed` fixture's parameter (test_e2e.py, test_api.py,
test_mtu.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab.nodes import OVS_VSWITCHD_DPDK
from lab.processes import TestbedError
from lab.testbed import Testbed

ROOT = Path(__file__).resolve().parent.parent


def _ours(prefix: str) -> list[str]:
    return [n for n in os.listdir("/run/netns") if n.startswith(prefix + "-")] if os.path.isdir("/run/netns") else []


@pytest.mark.ovs
def test_demo_with_the_dpdk_flag_shows_dpdk_ports_and_the_tunnel_in_the_datapath():
    assert os.access(OVS_VSWITCHD_DPDK, os.X_OK), "run scripts/install.sh (openvswitch-switch-dpdk)"
    proc = subprocess.run([sys.executable, "-m", "lab.demo", "--datapath", "dpdk", "--count", "3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "on the dpdk datapath" in out
    assert out.count(": net_af_packet (DPDK 22.11") == 4  # underlay and VM port, per hypervisor
    assert out.count("3 sent, 3 received, 0% loss") == 2
    assert "tnl_push(" in out and "tnl_pop(" in out
    prefix = out.split("(run prefix ", 1)[1].split(")", 1)[0]
    assert _ours(prefix) == []  # torn down, DPDK daemons with it
    assert f"{prefix}-" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


def test_a_dpdk_port_on_a_veth_refuses_an_underlay_it_cannot_carry(testbed):
    """af_packet takes frames of at most 1518 bytes: a DPDK hypervisor on a
    1600-byte segment is refused with the reason, before anything starts."""
    seg = testbed.add_segment("u", "192.168.1.0/24", mtu=1600)
    with pytest.raises(TestbedError, match="takes at most 1500"):
        testbed.add_hypervisor("hv1", "192.168.1.249", 24, seg, "00008ad828ce7949", datapath="dpdk")
    with pytest.raises(ValueError, match="netdev, dpdk"):
        Testbed(datapath="kernel")
