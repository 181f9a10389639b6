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

import ipaddress
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config, load_config
from .model import Endpoint
from .testbed import VM, Controller, Hypervisor, Router, Segment, Testbed, wait_until


@dataclass
class Overlay:
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


def build(tb: Testbed, config_path: str | Path, vm_prefixlen: int = 24,
          underlay: str = "192.168.0.0/16", static_neighbours: bool = True, *,
          routed_underlay: bool = False, rloc_prefixlen: int | None = None,
          vm_lan: bool = False) -> Overlay:
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
        segments = {net: tb.add_segment(f"wan{k}", str(net)) for k, net in enumerate(distinct, 1)}
        router = tb.add_router("rtr", list(segments.values()),
                               [f"{_first_host(net)}/{net.prefixlen}" for net in distinct])
        placement = [(segments[net], net, _first_host(net)) for net in nets]
    else:
        net = ipaddress.ip_network(underlay)
        router = None
        placement = [(tb.add_segment("wan", str(net)), net, None)] * len(bridges)
    segments = list(tb.segments.values())
    ov = Overlay(tb, Path(config_path), config, ctl, segments[0], segments=segments, router=router)
    if vm_lan:
        ov.vm_lan = tb.add_segment("vmlan", "0.0.0.0/32", mtu=1500)
    for i, (bridge, (segment, net, gateway)) in enumerate(zip(bridges, placement), 1):
        if bridge.datapath_id is None:
            raise ValueError(f"bridge {bridge.label}: the testbed needs a datapath_id")
        hv = tb.add_hypervisor(f"hv{i}", str(bridge.rloc), net.prefixlen, segment,
                               f"{bridge.datapath_id:016x}", bridge=bridge.name or "br2",
                               tunnel_port=bridge.tunnel_port, profile=bridge.profile,
                               controller=ctl, of_port=config.openflow_port, gateway=gateway)
        ov.hypervisors.append(hv)
        if ov.vm_lan is not None:
            tb.add_l2_port(hv, ov.vm_lan, "eth0")
        for ep in bridge.endpoints:
            v4 = [a for a in ep.eids if a.version == 4]
            v6 = [a for a in ep.eids if a.version == 6]
            vm = tb.add_vm(hv, f"vm{len(ov.vms) + 1}", ep.mac,
                           f"{v4[0]}/{vm_prefixlen}" if v4 else None,
                           ipv6=f"{v6[0]}/64" if v6 else None, port_name=ep.port)
            if ep.gateway is not None:
                vm.run("ip", "route", "add", "default", "via", str(ep.gateway))
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


class ControllerProcess:
    """`lisp-controller serve` running in the controller namespace."""

    def __init__(self, ov: Overlay, log_name: str = "controller"):
        self.ov = ov
        self.log_path = ov.testbed.tmpfile(log_name, ".log")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ControllerProcess":
        log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = self.ov.testbed.spawn(
            self.ov.controller_ns.ns,
            [sys.executable, "-m", "lisp_controller", "serve", "-c", str(self.ov.config_path)],
            env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, count: int = 1, timeout: float = 20.0) -> None:
        wait_until(lambda: self.log().count(text) >= count, timeout=timeout,
                   what=f"{count}x {text!r} in {self.log_path}")


def wait_programmed(ov: Overlay, timeout: float = 20.0) -> None:
    """Until every hypervisor's VM bridge holds our flows. A sync is one
    atomic bundle, so the first flow seen means all of them are there."""
    for hv in ov.hypervisors:
        wait_until(lambda: any("table=4" in line for line in hv.dump_flows()), timeout=timeout,
                   what=f"flows on {hv.name}")
