"""The seed's topology (the blog's two hypervisors, one underlay segment,
a VM on each) and its controller-free flows: the datapath tested without a
controller. Also the lab's small CLI:

    python -m lab.seed demo-topology [--controller] [--static-flows]
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Sequence

from lisp_controller.pipeline.profiles import DEFAULT_PROFILE, PROFILES
from lab.console import stop_on_sigterm, until_interrupted
from lab.nodes import VM, Controller, Hypervisor, Segment
from lab.testbed import Testbed




@dataclass
class SeedTopology:
    segment: Segment
    hv1: Hypervisor
    hv2: Hypervisor
    vm1: VM
    vm2: VM
    controller: Controller | None = None


SEED_IID = 1000


def build_seed_topology(tb: Testbed, profile: str = DEFAULT_PROFILE,
                        controller: bool = False) -> SeedTopology:
    """The blog's hosts: hv1 192.168.1.249 and hv2 192.168.1.252 on one
    underlay segment, VM bridge br2 with tunnel port lisp0; vm1 10.1.1.20 and
    vm2 10.1.1.30 on port vnet0 of each. ``controller`` adds the controller
    namespace and points both br2 bridges at it (configs/blog-two-hypervisors.toml).
    """
    ctl = tb.add_controller() if controller else None
    seg = tb.add_segment("underlay", "192.168.1.0/24")
    hv1 = tb.add_hypervisor("hv1", "192.168.1.249", 24, seg, "00008ad828ce7949",
                            profile=profile, controller=ctl)
    hv2 = tb.add_hypervisor("hv2", "192.168.1.252", 24, seg, "00001e2e0e0cf040",
                            profile=profile, controller=ctl)
    vm1 = tb.add_vm(hv1, "vm1", "52:54:00:b8:27:75", "10.1.1.20/24", port_name="vnet0")
    vm2 = tb.add_vm(hv2, "vm2", "52:54:00:1b:ea:d5", "10.1.1.30/24", port_name="vnet0")
    return SeedTopology(seg, hv1, hv2, vm1, vm2, ctl)


def static_flows(hv: Hypervisor, local: VM, remote: VM, remote_rloc: str,
                 iid: int = SEED_IID, decap_mac: str | None = None) -> list[str]:
    """Hand-written table-0 flows equivalent to what the controller installs
    for one local and one remote VM (the recipe's shape, docs/datapath.rst
    collapsed into table 0), for testing the datapath without a controller."""
    ports = hv.port_numbers()
    tun, vnet = ports[hv.tunnel_port], ports[local.port_name]
    decap = decap_mac or PROFILES[hv.profile].decap_mac
    return [
        f"table=0,priority=3,in_port={tun},dl_dst={decap}"
        f" actions=mod_dl_dst:{local.mac},output:{vnet}",
        f"table=0,priority=2,in_port={vnet},arp actions=NORMAL",
        f"table=0,priority=1,ip,in_port={vnet},vlan_tci=0,nw_dst={remote.ip}/32"
        f" actions=set_field:{remote_rloc}->tun_dst,set_field:{iid}->tun_id,output:{tun}",
        "table=0,priority=0 actions=NORMAL",
    ]


def install_static_seed(seed: SeedTopology, iid: int = SEED_IID) -> None:
    """Static flows plus static neighbour entries on both seed VMs."""
    seed.hv1.add_flows(static_flows(seed.hv1, seed.vm1, seed.vm2, seed.hv2.rloc, iid))
    seed.hv2.add_flows(static_flows(seed.hv2, seed.vm2, seed.vm1, seed.hv1.rloc, iid))
    seed.vm1.neigh_add(seed.vm2.ip, seed.vm2.mac)
    seed.vm2.neigh_add(seed.vm1.ip, seed.vm1.mac)


# --------------------------------------------------------------------------
# CLI



def _cmd_demo_topology(args: argparse.Namespace) -> int:
    with Testbed() as tb:
        seed = build_seed_topology(tb, profile=args.profile, controller=args.controller)
        if args.static_flows:
            install_static_seed(seed)
        print(f"testbed {tb.prefix} (temp dir {tb.tmpdir})")
        for ns in tb.namespaces:
            print(f"  namespace {ns}")
        for hv in (seed.hv1, seed.hv2):
            print(f"  {hv.name}: ns={hv.ns} rloc={hv.rloc} dpid={hv.datapath_id} "
                  f"mgmt={hv.mgmt_address} OVS_RUNDIR={hv.rundir}")
        for vm in (seed.vm1, seed.vm2):
            print(f"  {vm.name}: ns={vm.ns} {vm.ip_with_prefix} {vm.mac} "
                  f"on {vm.hv.name}:{vm.port_name}")
        print(f"example: OVS_RUNDIR={seed.hv1.rundir} ip netns exec {seed.hv1.ns} "
              f"ovs-ofctl -O OpenFlow13 dump-flows br2")
        until_interrupted("Ctrl-C tears everything down.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.seed",
        description="Namespace testbed: hypervisors (own ovs-vswitchd each) and VMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo-topology",
                          help="build the blog's two-hypervisor topology and wait for Ctrl-C")
    demo.add_argument("--profile", default=DEFAULT_PROFILE, choices=sorted(PROFILES))
    demo.add_argument("--controller", action="store_true",
                      help="add the controller namespace and point br2 at 172.31.255.1:6653")
    demo.add_argument("--static-flows", action="store_true",
                      help="install hand-written flows and static neighbours (no controller)")
    demo.set_defaults(func=_cmd_demo_topology)
    args = parser.parse_args(argv)
    stop_on_sigterm()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
