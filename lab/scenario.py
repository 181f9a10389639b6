"""Build a testbed topology from a controller config, and run the controller.

The demo and the end-to-end tests share this: one hypervisor per configured
bridge (same datapath ID, RLOC, tunnel port and profile), one VM per
endpoint (same port name, MAC, EIDs and gateway), and the controller started
as a real `lisp-controller serve` process in its own namespace. What users
configure is exactly what gets tested.

The underlay and the VM side take the shape of the OVS LISP recipe's three
scenarios (docs/scenario-*.rst): all hypervisors on one segment (1 and 3) or
one segment per RLOC subnet joined by a router namespace (2); optionally the
VM bridges joined by an L2 segment (1: the recipe's eth0 on br0).
"""
from __future__ import annotations

import functools
import ipaddress
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lisp_controller.config import Config, load_config
from lisp_controller.model import Endpoint
from lisp_controller.pipeline.profiles import DEFAULT_UNDERLAY_MTU
from lab.serve import ServeProcess
from lab.console import stop_on_sigterm, until_interrupted
from lab.nodes import VM, Controller, Hypervisor, Router, Segment
from lab.processes import wait_until
from lab.testbed import HOST, Testbed

@dataclass
class Topology:
    """The namespaces built for one controller config: its hypervisors, VMs,
    underlay segments and the controller's namespace. (The controller's own
    `model.Overlay` is the config's content; this is the lab that runs it.)"""

    testbed: Testbed
    config_path: Path
    config: Config
    controller_ns: Controller
    segment: Segment  # the (first) underlay segment
    hypervisors: list[Hypervisor] = field(default_factory=list)
    vms: list[VM] = field(default_factory=list)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)  # VM name -> its endpoint
    segments: list[Segment] = field(default_factory=list)  # every underlay segment
    router: Router | None = None  # the underlay router (routed_underlay)
    vm_lan: Segment | None = None  # the L2 segment joining the VM bridges

    def vm(self, name: str) -> VM:
        return next(v for v in self.vms if v.name == name)


def _first_host(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    return str(net.network_address + 1)


def add_endpoint_vm(tb: Testbed, hv: Hypervisor, ep: Endpoint, name: str,
                    prefixlen: int = 24, mtu: int | None = None) -> VM:
    """A VM namespace exactly as the endpoint describes it: port name, MAC,
    first IPv4 and IPv6 EID, default route via its gateway."""
    v4 = [a for a in ep.eids if a.version == 4]
    v6 = [a for a in ep.eids if a.version == 6]
    vm = tb.add_vm(hv, name, ep.mac, f"{v4[0]}/{prefixlen}" if v4 else None,
                   ipv6=f"{v6[0]}/64" if v6 else None, port_name=ep.port)
    if mtu is not None:
        vm.run("ip", "link", "set", vm.iface, "mtu", str(mtu))
    if ep.gateway is not None:
        vm.run("ip", "route", "add", "default", "via", str(ep.gateway))
    return vm


def build(tb: Testbed, config_path: str | Path, vm_prefixlen: int = 24,
          underlay: str = "192.168.0.0/16", static_neighbours: bool = True, *,
          routed_underlay: bool = False, rloc_prefixlen: int | None = None,
          vm_lan: bool = False, datapath: str | None = None) -> Topology:
    """Hypervisors and VMs as the config describes them; VM i of the config
    is named vm<i+1> and gets a default route via its endpoint's gateway.

    Underlay: by default every RLOC (IPv4 or IPv6) sits in `underlay`, one
    segment. `routed_underlay` instead puts each RLOC subnet (RLOC/
    `rloc_prefixlen`, default /24 or /64) on a segment of its own, joined by
    a router namespace at the first address of each subnet, which is every
    hypervisor's gateway (scenario 2). `vm_lan` adds port eth0 to every VM
    bridge, all on one L2 segment (scenario 1). With `static_neighbours`,
    every VM gets a neighbour entry for every other VM of its IID (the
    blog's `arp -f /etc/ethers`)."""
    config = load_config(config_path)
    if config.openflow_host in ("0.0.0.0", "::"):
        raise ValueError("the testbed needs a config whose controller.listen is its management address")
    ctl = tb.add_controller()
    if ctl.address != config.openflow_host:
        raise ValueError(f"config listens on {config.openflow_host}, testbed controller is {ctl.address}")
    bridges = config.overlay.bridges
    # (segment network, gateway) per bridge
    if routed_underlay:
        nets = [ipaddress.ip_interface(f"{b.rloc}/{rloc_prefixlen or (24 if b.rloc.version == 4 else 64)}").network
                for b in bridges]
        distinct = list(dict.fromkeys(nets))
        segments = {net: tb.add_segment(f"wan{k}", str(net), mtu=_underlay_mtu(
                        b for b, n in zip(bridges, nets) if n == net))
                    for k, net in enumerate(distinct, 1)}
        router = tb.add_router("rtr", list(segments.values()),
                               [f"{_first_host(net)}/{net.prefixlen}" for net in distinct])
        placement = [(segments[net], net, _first_host(net)) for net in nets]
    else:
        net = ipaddress.ip_network(underlay)
        router = None
        placement = [(tb.add_segment("wan", str(net), mtu=_underlay_mtu(bridges)), net, None)] * len(bridges)
    segments = list(tb.segments.values())
    ov = Topology(tb, Path(config_path), config, ctl, segments[0], segments=segments, router=router)
    if vm_lan:
        ov.vm_lan = tb.add_segment("vmlan", "0.0.0.0/32", mtu=1500)
    for i, (bridge, (segment, net, gateway)) in enumerate(zip(bridges, placement), 1):
        if bridge.datapath_id is None:
            raise ValueError(f"bridge {bridge.label}: the testbed needs a datapath_id")
        hv = tb.add_hypervisor(f"hv{i}", str(bridge.rloc), net.prefixlen, segment,
                               f"{bridge.datapath_id:016x}", bridge=bridge.name or "br2",
                               tunnel_port=bridge.tunnel_port, profile=bridge.profile,
                               controller=ctl, of_port=config.openflow_port, gateway=gateway,
                               datapath=datapath)
        ov.hypervisors.append(hv)
        if ov.vm_lan is not None:
            tb.add_l2_port(hv, ov.vm_lan, "eth0")
        for ep in bridge.endpoints:
            vm = add_endpoint_vm(tb, hv, ep, f"vm{len(ov.vms) + 1}", vm_prefixlen)
            ov.vms.append(vm)
            ov.endpoints[vm.name] = ep
    if static_neighbours:
        for vm in ov.vms:
            for other in ov.vms:
                if other is not vm and ov.endpoints[other.name].iid == ov.endpoints[vm.name].iid:
                    for addr in (other.ip, other.ipv6):
                        if addr:
                            vm.neigh_add(addr, other.mac)
    return ov


def _underlay_mtu(bridges) -> int:
    """One segment's MTU: the smallest its bridges are configured with (the
    default one for a Map-Server-only config, which has no bridge)."""
    return min((b.underlay_mtu for b in bridges), default=DEFAULT_UNDERLAY_MTU)


class ControllerProcess(ServeProcess):
    """`lisp-controller serve` running in the controller namespace
    (lab/serve.py's launcher, placed in the topology)."""

    def __init__(self, ov: Topology, log_name: str = "controller", env: dict | None = None,
                 store_path: Path | None = None, wrapper: tuple[str, ...] = (),
                 config_path: Path | None = None, hooks: tuple[str, ...] = ()):
        """`config_path` (default: the overlay's) with its own store: no
        --store given. Otherwise one SQLite store per overlay
        (`store_path`), kept across restarts of the controller."""
        self.ov = ov
        super().__init__(config_path or ov.config_path, ov.testbed.tmpfile(log_name, ".log"),
                         store_path=None if config_path is not None else
                         (store_path or ov.testbed.tmpdir / "store.db"),
                         hooks=hooks, env=env, wrapper=wrapper,
                         spawn=functools.partial(ov.testbed.spawn, ov.controller_ns.ns))


def wait_programmed(ov: Topology, timeout: float = 20.0) -> None:
    """Until every hypervisor's VM bridge holds our flows. A sync is one
    atomic bundle, so the first flow seen means all of them are there."""
    for hv in ov.hypervisors:
        wait_until(lambda: any("table=4" in line for line in hv.dump_flows()), timeout=timeout,
                   what=f"flows on {hv.name}")


# --------------------------------------------------------------------------
# Whole-host mode: one real machine (a Vagrant box) is one hypervisor.


def build_host(tb: Testbed, config: Config, bridge_label: str, nic: str,
               prefixlen: int = 24, vm_mtu: int = 1400) -> tuple[Hypervisor, list[VM]]:
    """This host becomes the configured bridge `bridge_label`: its OVS, its
    NIC `nic` carrying the RLOC, the controller at the config's listen
    address, and one VM namespace per endpoint. The VMs get a smaller MTU
    because a real underlay usually has no room for the tunnel header."""
    matches = [b for b in config.overlay.bridges
               if bridge_label in (b.label, b.name, f"{b.datapath_id or 0:016x}")]
    if len(matches) != 1:
        raise ValueError(f"bridge {bridge_label!r} is {'ambiguous' if matches else 'not'} in {config.source}")
    bridge = matches[0]
    if bridge.datapath_id is None:
        raise ValueError(f"bridge {bridge.label}: whole-host mode needs a datapath_id")
    hv = tb.add_host_hypervisor("hv", str(bridge.rloc), prefixlen, nic, f"{bridge.datapath_id:016x}",
                                config.openflow_host, config.openflow_port,
                                bridge=bridge.name or "br2", tunnel_port=bridge.tunnel_port,
                                profile=bridge.profile)
    vms = [add_endpoint_vm(tb, hv, ep, f"vm-{ep.port}", mtu=vm_mtu) for ep in bridge.endpoints]
    return hv, vms


def _cmd_host(args) -> int:
    config = load_config(args.config)
    with Testbed(prefix=args.prefix, whole_host=True) as tb:
        hv, vms = build_host(tb, config, args.bridge, args.nic, args.prefixlen, args.vm_mtu)
        if args.serve:
            log = open(args.log, "ab")
            tb.spawn(HOST, [sys.executable, "-m", "lisp_controller", "serve", "-c", str(args.config)],
                     env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=log, stderr=subprocess.STDOUT)
            log.close()
        print(f"host hypervisor {args.bridge}: RLOC {hv.rloc} on br-phy ({args.nic}), "
              f"bridge {hv.bridge}, OVS_RUNDIR={hv.rundir}")
        for vm in vms:
            print(f"  vm {vm.name}: ip netns exec {vm.ns} ...  ({vm.ip}, {vm.mac})")
        until_interrupted("ready")
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lab.scenario")
    sub = parser.add_subparsers(dest="command", required=True)
    host = sub.add_parser("host", help="make THIS machine (a disposable box) one hypervisor of a "
                          "config; runs until SIGTERM, then removes everything it made")
    host.add_argument("-c", "--config", required=True)
    host.add_argument("--bridge", required=True, help="bridge label, name or datapath ID")
    host.add_argument("--nic", required=True, help="underlay NIC; its address is moved to br-phy")
    host.add_argument("--prefixlen", type=int, default=24, help="RLOC subnet prefix length")
    host.add_argument("--vm-mtu", type=int, default=1400)
    host.add_argument("--serve", action="store_true", help="also run the controller here")
    host.add_argument("--log", default="/var/log/lisp-controller.log", help="controller log (--serve)")
    host.add_argument("--prefix", default=None, help="namespace name prefix (default: random)")
    host.set_defaults(func=_cmd_host)
    args = parser.parse_args(argv)
    stop_on_sigterm()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
