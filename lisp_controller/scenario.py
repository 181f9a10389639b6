"""Build a testbed topology from a controller config, and run the controller.

The demo and the end-to-end tests share this: one hypervisor per configured
bridge (same datapath ID, RLOC, tunnel port and profile), one VM per
endpoint (same port name, MAC and EIDs), all on one underlay segment, and
the controller started as a real `lisp-controller serve` process in its own
namespace. What users configure is exactly what gets tested.
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
from .testbed import VM, Controller, Hypervisor, Segment, Testbed, wait_until


@dataclass
class Overlay:
    testbed: Testbed
    config_path: Path
    config: Config
    controller_ns: Controller
    segment: Segment
    hypervisors: list[Hypervisor] = field(default_factory=list)
    vms: list[VM] = field(default_factory=list)

    def vm(self, name: str) -> VM:
        return next(v for v in self.vms if v.name == name)


def build(tb: Testbed, config_path: str | Path, vm_prefixlen: int = 24,
          underlay: str = "192.168.0.0/16", static_neighbours: bool = True) -> Overlay:
    """Hypervisors and VMs as the config describes them. RLOCs must be IPv4
    in `underlay`; VM i of the config is named vm<i+1>. With
    `static_neighbours`, every VM gets a neighbour entry for every other
    VM's address (the blog's `arp -f /etc/ethers`)."""
    config = load_config(config_path)
    if config.openflow_host in ("0.0.0.0", "::"):
        raise ValueError("the testbed needs a config whose controller.listen is its management address")
    ctl = tb.add_controller()
    if ctl.address != config.openflow_host:
        raise ValueError(f"config listens on {config.openflow_host}, testbed controller is {ctl.address}")
    net = ipaddress.ip_network(underlay)
    segment = tb.add_segment("wan", str(net))
    ov = Overlay(tb, Path(config_path), config, ctl, segment)
    for i, bridge in enumerate(config.overlay.bridges, 1):
        if bridge.datapath_id is None:
            raise ValueError(f"bridge {bridge.label}: the testbed needs a datapath_id")
        hv = tb.add_hypervisor(f"hv{i}", str(bridge.rloc), net.prefixlen, segment,
                               f"{bridge.datapath_id:016x}", bridge=bridge.name or "br2",
                               tunnel_port=bridge.tunnel_port, profile=bridge.profile,
                               controller=ctl, of_port=config.openflow_port)
        ov.hypervisors.append(hv)
        for ep in bridge.endpoints:
            v4 = [a for a in ep.eids if a.version == 4]
            v6 = [a for a in ep.eids if a.version == 6]
            vm = tb.add_vm(hv, f"vm{len(ov.vms) + 1}", ep.mac,
                           f"{v4[0]}/{vm_prefixlen}" if v4 else None,
                           ipv6=f"{v6[0]}/64" if v6 else None, port_name=ep.port)
            ov.vms.append(vm)
    if static_neighbours:
        for vm in ov.vms:
            for other in ov.vms:
                if other is not vm:
                    for addr in (other.ip, other.ipv6):
                        if addr:
                            vm.neigh_add(addr, other.mac)
    return ov


class ControllerProcess:
    """`lisp-controller serve` running in the controller namespace."""

    def __init__(self, ov: Overlay, log_name: str = "controller", env: dict | None = None):
        self.ov = ov
        self.log_path = ov.testbed.tmpfile(log_name, ".log")
        # One store per overlay, kept across restarts of the controller.
        self.store_path = ov.testbed.tmpdir / "store.db"
        self.env = env or {}
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ControllerProcess":
        log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self.proc = self.ov.testbed.spawn(
            self.ov.controller_ns.ns,
            [sys.executable, "-m", "lisp_controller", "serve", "-c", str(self.ov.config_path),
             "--store", str(self.store_path)],
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
