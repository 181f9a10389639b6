"""A throw-away network of hypervisors and VMs built from Linux namespaces.

Why it exists: the controller must be tested against real Open vSwitch, but
the machine running the tests is not ours to reconfigure. So every hypervisor
is a network namespace running its own ``ovsdb-server`` + ``ovs-vswitchd``
(userspace datapath, ``--disable-system``; or its DPDK build with DPDK
``af_packet`` ports, ``datapath="dpdk"``) out of a private temp directory,
every VM is a namespace attached by a veth pair, and underlay segments,
routers and the controller's management LAN are namespaces holding Linux
bridges. Nothing is created in the root namespace and the system OVS service
is never used (docs/datapath.rst, "The lab").

Safety rules enforced here:

- every namespace and interface name carries a per-run prefix;
- daemons are stopped by the PIDs in the pidfiles this run passed, and only
  after checking that their command line names this run's temp directory;
- teardown always runs (``with`` block, ``close()``, and ``atexit``);
- ping/connect helpers refuse to run unless ``ip netns identify`` says the
  process is inside one of this run's namespaces, so the seed addresses
  (10.x, 192.168.x) never reach a real network.

Stdlib only (no os-ken import), so the demo and CI can use it alone.
The objects it makes are in lab/nodes.py and lab/capture.py; the seed's
topology and its small CLI (``python -m lab.seed --help``) in lab/seed.py.
"""
from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from lisp_controller.pipeline.profiles import DEFAULT_PROFILE, PROFILES
from lab.capture import Capture
from lab.netns import current_netns, list_netns, netns, netns_inode
from lab.nodes import (DATAPATHS, DPDK_AF_PACKET_MAX_MTU, OVS_SCHEMA, OVS_VSWITCHD_DPDK, VM, Controller,
                       Hypervisor, Router, Segment)
from lab.processes import TestbedError, UnsafeTarget, cmdline, normalize_dpid, pid_alive, read_pid, run_command

MGMT_NET = ipaddress.ip_network("172.31.255.0/24")
CONTROLLER_ADDRESS = "172.31.255.1"
IFNAMSIZ = 15  # Linux interface names: at most 15 characters
# Underlay MTU: 1500 + room for an encapsulation header over IPv4 or IPv6
# (lisp-gpe adds 36 bytes over IPv4: IP 20 + UDP 8 + header 8; gre-l3 28).
UNDERLAY_MTU = 1600
# The namespace this process runs in, for a hypervisor that is a whole
# (disposable) host: see Testbed.add_host_hypervisor.
HOST = "@host"



class Testbed:
    """Owner of everything one test run creates; tears it all down.

    Use as a context manager (or call close()); close() is also registered
    with atexit as a safety net. Creation order: add_controller() (optional,
    first, so hypervisors get management links), add_segment(), then
    add_hypervisor() and add_vm().
    """

    __test__ = False

    def __init__(self, prefix: str | None = None, keep_tmp: bool = False,
                 whole_host: bool = False, datapath: str = "netdev") -> None:
        if os.geteuid() != 0:
            raise TestbedError("the testbed needs root (network namespaces, veths)")
        if datapath not in DATAPATHS:
            raise ValueError(f"datapath must be one of {', '.join(DATAPATHS)}, got {datapath!r}")
        if datapath == "dpdk" and not os.access(OVS_VSWITCHD_DPDK, os.X_OK):
            raise TestbedError(f"{OVS_VSWITCHD_DPDK} is missing: run scripts/install.sh "
                               "(package openvswitch-switch-dpdk)")
        # Every hypervisor's datapath unless add_hypervisor says otherwise.
        self.datapath = datapath
        # Only add_host_hypervisor() may touch the namespace this process
        # runs in (a disposable Vagrant box); tests never set this.
        self.whole_host = whole_host
        self.prefix = prefix or self._fresh_prefix()
        if len(self.prefix) > 8:
            raise ValueError("prefix too long for 15-character interface names")
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self.keep_tmp = keep_tmp
        self.namespaces: list[str] = []
        self._pidfiles: list[Path] = []
        self._children: list[subprocess.Popen[bytes]] = []
        self.controller: Controller | None = None
        self.segments: dict[str, Segment] = {}
        self.hypervisors: dict[str, Hypervisor] = {}
        self.vms: dict[str, VM] = {}
        self.routers: dict[str, Router] = {}
        self._tmp_counter = 0
        self._closed = False
        atexit.register(self.close)

    @staticmethod
    def _fresh_prefix() -> str:
        existing = set(list_netns())
        while True:
            prefix = "lt" + secrets.token_hex(3)[:5]
            if not any(n.startswith(prefix) for n in existing):
                return prefix

    def __enter__(self) -> "Testbed":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Testbed {self.prefix} {self.tmpdir}>"

    # -- names, files -----------------------------------------------------
    def ifname(self, tag: str) -> str:
        """An interface name carrying the run prefix, checked against IFNAMSIZ."""
        name = f"{self.prefix}{tag}"
        if len(name) > IFNAMSIZ:
            raise ValueError(f"interface name {name!r} longer than {IFNAMSIZ}")
        return name

    def nsname(self, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"bad name {name!r}")
        return f"{self.prefix}-{name}"

    def tmpfile(self, stem: str, suffix: str = "") -> Path:
        self._tmp_counter += 1
        return self.tmpdir / f"{stem}{self._tmp_counter}{suffix}"

    # -- running commands -------------------------------------------------
    def run(self, ns: str, *args: str, env: dict[str, str] | None = None,
            check: bool = True, timeout: float = 60.0,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``args`` inside namespace ``ns`` (``ip netns exec``); raise
        CommandError with the command and its stderr if it fails."""
        self._require_ns(ns)
        prefix = [] if ns == HOST else ["ip", "netns", "exec", ns]
        return run_command([*prefix, *args], env=env, check=check, timeout=timeout, input=input)

    def spawn(self, ns: str, args: Sequence[str], *, env: dict[str, str] | None = None,
              **popen_kw: Any) -> subprocess.Popen[bytes]:
        """Start a long-running process inside ``ns`` (e.g. the controller).

        ``ip netns exec`` execs the command, so the Popen PID is the process
        itself; it is stopped by that PID at teardown.
        """
        self._require_ns(ns)
        prefix = [] if ns == HOST else ["ip", "netns", "exec", ns]
        proc = subprocess.Popen([*prefix, *args], env=env, start_new_session=True, **popen_kw)
        self._children.append(proc)
        return proc

    def _require_ns(self, ns: str) -> None:
        if ns == HOST and self.whole_host:
            return
        if ns not in self.namespaces:
            raise UnsafeTarget(f"namespace {ns!r} was not created by testbed {self.prefix}")

    def assert_ours(self, ns: str) -> None:
        """Refuse unless a process started in ``ns`` really lands in one of
        this run's namespaces (asked of ``ip netns identify`` from inside)."""
        self._require_ns(ns)
        names = run_command(["ip", "netns", "exec", ns, "ip", "netns", "identify"],
                     timeout=10).stdout.split()
        if not names or not set(names) <= set(self.namespaces):
            raise UnsafeTarget(f"ip netns identify in {ns!r} says {names!r}; "
                               f"not one of testbed {self.prefix}'s namespaces")

    @contextlib.contextmanager
    def netns(self, ns: str) -> Iterator[None]:
        """Move the calling thread into one of our namespaces for the body
        (REST calls to 127.0.0.1 in the controller namespace, browsers)."""
        self.assert_ours(ns)
        with netns(ns):
            if current_netns() != ns:
                raise UnsafeTarget(f"setns into {ns!r} did not take effect")
            yield

    def capture(self, ns: str, iface: str, name: str = "capture") -> Capture:
        """A Capture (not started yet) writing into the temp dir."""
        return Capture(self, ns, iface, self.tmpfile(name + "-", ".pcapng"))

    # -- building ---------------------------------------------------------
    def _add_ns(self, name: str) -> str:
        ns = self.nsname(name)
        if ns in self.namespaces:
            raise ValueError(f"duplicate name {name!r}")
        run_command(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        self.run(ns, "ip", "link", "set", "lo", "up")
        return ns

    def _veth(self, ns: str, name: str, peer_ns: str, peer: str,
              mtu: int | None = None) -> None:
        """A veth pair created directly in two of our namespaces (never in
        the root namespace, not even for a moment)."""
        self._require_ns(peer_ns)
        m = ["mtu", str(mtu)] if mtu else []
        self.run(ns, "ip", "link", "add", name, *m, "type", "veth",
                 "peer", "name", peer, *m, "netns", peer_ns)

    def _linux_bridge(self, ns: str, name: str) -> None:
        # A fixed MAC: otherwise the bridge takes the lowest MAC of its
        # ports and changes it as ports are added, and a neighbour that
        # cached the old one loses the bridge's address until its ARP entry
        # expires (seen: a hypervisor that could not reach the controller).
        mac = "02:" + ":".join(f"{b:02x}" for b in os.urandom(5))
        self.run(ns, "ip", "link", "add", name, "address", mac, "type", "bridge", "stp_state", "0",
                 "forward_delay", "0", "mcast_snooping", "0")
        self._no_ipv6(ns, name)
        self.run(ns, "ip", "link", "set", name, "up")

    def _enslave(self, ns: str, iface: str, bridge: str) -> None:
        self._quiet_port(ns, iface)
        self.run(ns, "ip", "link", "set", iface, "master", bridge)
        self.run(ns, "ip", "link", "set", iface, "up")

    def _no_ipv6(self, ns: str, iface: str) -> None:
        """No link-local address, DAD, MLD or router solicitations from this
        interface: keeps captures and packet-ins down to the test's traffic."""
        self.run(ns, "sysctl", "-q", "-w", f"net.ipv6.conf.{iface}.disable_ipv6=1")

    def _quiet_port(self, ns: str, iface: str) -> None:
        """An interface handed to OVS (or a Linux bridge) stays in the
        namespace's kernel stack too: stop that kernel answering ARP on it
        (it would answer for the RLOC with the veth's MAC) or sending IPv6."""
        self.run(ns, "ip", "link", "set", iface, "arp", "off")
        self._no_ipv6(ns, iface)

    def add_controller(self, name: str = "ctl") -> Controller:
        """The controller namespace with the management LAN bridge
        (172.31.255.1/24). Call before add_hypervisor()."""
        if self.controller is not None:
            raise TestbedError("a controller namespace already exists")
        if self.hypervisors:
            raise TestbedError("add the controller before the hypervisors")
        ns = self._add_ns(name)
        bridge = self.ifname("mgmt")
        self._linux_bridge(ns, bridge)
        self.run(ns, "ip", "addr", "add", f"{CONTROLLER_ADDRESS}/{MGMT_NET.prefixlen}",
                 "dev", bridge)
        self.controller = Controller(ns=ns, address=CONTROLLER_ADDRESS, bridge=bridge,
                                     testbed=self)
        return self.controller

    def add_segment(self, name: str, cidr: str, mtu: int = UNDERLAY_MTU) -> Segment:
        """An L2 underlay segment: a namespace holding one Linux bridge.

        ``mtu`` applies to every underlay link on it (bridge, hypervisor and
        router legs). The default leaves room for the tunnel header, so VMs
        keep MTU 1500; with 1500 here, full-size VM packets are dropped by
        ovs-vswitchd ("error sending Ethernet packet ...: Message too long").
        """
        if name in self.segments:
            raise ValueError(f"duplicate segment {name!r}")
        index = len(self.segments) + 1
        ns = self._add_ns(f"seg-{name}")
        bridge = self.ifname(f"s{index}")
        self._linux_bridge(ns, bridge)
        self.run(ns, "ip", "link", "set", bridge, "mtu", str(mtu))
        seg = Segment(name=name, ns=ns, bridge=bridge,
                      network=ipaddress.ip_network(cidr, strict=False), index=index, mtu=mtu)
        self.segments[name] = seg
        return seg

    def add_router(self, name: str, segments: Sequence[Segment],
                   addresses: Sequence[str]) -> Router:
        """A router namespace with one leg (address with prefix) per segment
        and forwarding on; hypervisors reach it via add_hypervisor(gateway=)."""
        if len(segments) != len(addresses):
            raise ValueError("one address per segment")
        ns = self._add_ns(name)
        rindex = len(self.routers) + 1
        router = Router(name=name, ns=ns, interfaces={}, addresses={})
        for j, (seg, addr) in enumerate(zip(segments, addresses), start=1):
            iface = self.ifname(f"r{rindex}i{j}")
            peer = self.ifname(f"r{rindex}s{seg.index}")
            self._veth(ns, iface, seg.ns, peer, mtu=seg.mtu)
            self._enslave(seg.ns, peer, seg.bridge)
            extra = ["nodad"] if ":" in addr else []
            self.run(ns, "ip", "addr", "add", addr, "dev", iface, *extra)
            self.run(ns, "ip", "link", "set", iface, "up")
            router.interfaces[seg.name] = iface
            router.addresses[seg.name] = addr
        self.run(ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        self.run(ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")
        self.routers[name] = router
        return router

    def add_hypervisor(self, name: str, rloc: str, prefixlen: int, segment: Segment,
                       datapath_id: str | int, bridge: str = "br2",
                       tunnel_port: str = "lisp0", profile: str = DEFAULT_PROFILE,
                       controller: Controller | None = None, of_port: int = 6653,
                       gateway: str | None = None, datapath: str | None = None) -> Hypervisor:
        """A hypervisor namespace running its own OVS, with:

        - ``br-phy`` (netdev, standalone) holding the underlay veth and the
          RLOC, as in OVS's userspace tunnelling guide;
        - the VM bridge (netdev, secure, OpenFlow13, given datapath ID,
          in-band off) with the profile's tunnel port;
        - a management link to the controller LAN if a controller exists,
          address 172.31.255.(10+index); ``controller`` also points the VM
          bridge at tcp:<controller>:<of_port> with max_backoff=1000.

        ``datapath`` (default: the testbed's) is "netdev" or "dpdk"; with
        "dpdk" the daemon is OVS's DPDK build and every port on either
        bridge is a DPDK port on its veth (docs/datapath.rst, "OVS-DPDK").
        """
        if name in self.hypervisors:
            raise ValueError(f"duplicate hypervisor {name!r}")
        datapath = datapath or self.datapath
        if datapath not in DATAPATHS:
            raise ValueError(f"datapath must be one of {', '.join(DATAPATHS)}, got {datapath!r}")
        if datapath == "dpdk" and segment.mtu > DPDK_AF_PACKET_MAX_MTU:
            raise TestbedError(f"segment {segment.name} has MTU {segment.mtu}; a DPDK port on a veth "
                               f"(af_packet) takes at most {DPDK_AF_PACKET_MAX_MTU}")
        ns = self._add_ns(name)
        hv = self._new_hypervisor(name, ns, rloc, prefixlen, segment, datapath_id, bridge,
                                  tunnel_port, profile, self.ifname("phy"), gateway, datapath)
        # Underlay: veth into the segment's bridge, enslaved to br-phy.
        peer = self.ifname(f"h{hv.index}s{segment.index}")
        self._veth(ns, hv.underlay_iface, segment.ns, peer, mtu=segment.mtu)
        self._enslave(segment.ns, peer, segment.bridge)
        self._setup_ovs(hv, segment.mtu)
        if self.controller is not None:
            self._add_mgmt_link(hv)
        if controller is not None:
            if controller is not self.controller:
                raise UnsafeTarget("controller does not belong to this testbed")
            self._set_controller(hv, controller.address, of_port)
        return hv

    def add_host_hypervisor(self, name: str, rloc: str, prefixlen: int, nic: str,
                            datapath_id: str | int, controller: str, of_port: int = 6653,
                            bridge: str = "br2", tunnel_port: str = "lisp0",
                            profile: str = DEFAULT_PROFILE, gateway: str | None = None,
                            mtu: int = 1500) -> Hypervisor:
        """The hypervisor is this whole host (a Vagrant box): its OVS runs
        in this process's namespace and its real NIC ``nic`` moves into
        br-phy, whose address becomes the RLOC (the NIC's own address is
        flushed). VMs are still namespaces. ``controller`` is the
        controller's address on the underlay. Needs Testbed(whole_host=True).
        """
        if not self.whole_host:
            raise UnsafeTarget("add_host_hypervisor needs Testbed(whole_host=True)")
        if self.run(HOST, "ip", "link", "show", nic, check=False).returncode != 0:
            raise TestbedError(f"no interface {nic!r} on this host")
        hv = self._new_hypervisor(name, HOST, rloc, prefixlen, None, datapath_id, bridge,
                                  tunnel_port, profile, nic, gateway)
        self.run(HOST, "ip", "addr", "flush", "dev", nic)
        self._setup_ovs(hv, mtu)
        self._set_controller(hv, controller, of_port)
        return hv

    def _new_hypervisor(self, name: str, ns: str, rloc: str, prefixlen: int,
                        segment: Segment | None, datapath_id: str | int, bridge: str,
                        tunnel_port: str, profile: str, underlay_iface: str,
                        gateway: str | None, datapath: str = "netdev") -> Hypervisor:
        if name in self.hypervisors:
            raise ValueError(f"duplicate hypervisor {name!r}")
        if profile not in PROFILES:
            raise ValueError(f"unknown tunnel profile {profile!r}")
        rundir = self.tmpdir / name
        rundir.mkdir()
        hv = Hypervisor(self, name=name, index=len(self.hypervisors) + 1, ns=ns, rundir=rundir,
                        rloc=rloc, prefixlen=prefixlen, segment=segment,  # type: ignore[arg-type]
                        datapath_id=normalize_dpid(datapath_id), bridge=bridge,
                        tunnel_port=tunnel_port, profile=profile,
                        underlay_iface=underlay_iface, gateway=gateway, datapath=datapath)
        self.hypervisors[name] = hv
        return hv

    def _setup_ovs(self, hv: Hypervisor, mtu: int) -> None:
        """Daemons, br-phy holding the underlay interface and the RLOC (as in
        OVS's userspace tunnelling guide), the VM bridge and its tunnel port."""
        # ovsdb-tool touches only a file, so it may run anywhere.
        run_command(["ovsdb-tool", "create", str(hv.db_path), OVS_SCHEMA])
        hv._start_ovsdb()
        hv.vsctl("init", wait=False)
        hv._start_vswitchd()
        phy = hv.underlay_iface
        self._quiet_port(hv.ns, phy)
        self.run(hv.ns, "ethtool", "-K", phy, "tx", "off")
        self.run(hv.ns, "ip", "link", "set", phy, "up")
        hv.vsctl("add-br", "br-phy",
                 "--", "set", "Bridge", "br-phy", "datapath_type=netdev",
                 "fail_mode=standalone",
                 # Not the veth's MAC (OVS's default pick): frames for the
                 # RLOC must not also be taken by the kernel on the veth.
                 f"other_config:hwaddr={_rloc_mac(hv.rloc)}",
                 "--", "add-port", "br-phy", phy, *hv.port_args(phy),
                 *(["--", "set", "Interface", phy, f"mtu_request={mtu}"] if hv.dpdk else []),
                 "--", "set", "Interface", "br-phy", f"mtu_request={mtu}")
        hv._configure_underlay_ip()
        hv.add_vm_bridge(hv.bridge, hv.datapath_id, hv.tunnel_port, hv.profile)

    @staticmethod
    def _set_controller(hv: Hypervisor, address: str, of_port: int) -> None:
        hv.set_controller(hv.bridge, address, of_port)

    def add_box(self, name: str, segment: Segment, address: str, nic: str = "eth1") -> str:
        """A namespace standing in for a whole machine (a Vagrant box) with
        one NIC ``nic`` on ``segment`` holding ``address`` (with prefix), as
        Vagrant's private network leaves it. Tests run the whole-host mode
        inside it (``python -m lab.scenario host``)."""
        ns = self._add_ns(name)
        peer = self.ifname(f"b{len(self.namespaces)}s{segment.index}")
        self._veth(ns, nic, segment.ns, peer, mtu=segment.mtu)
        self._enslave(segment.ns, peer, segment.bridge)
        self.run(ns, "ip", "addr", "add", address, "dev", nic)
        self.run(ns, "ip", "link", "set", nic, "up")
        return ns

    def add_mgmt_host(self, name: str, host: int) -> tuple[str, str]:
        """A namespace on the controller's management LAN at 172.31.255.<host>
        (a mapping system the controller talks LISP to). Returns (namespace,
        address)."""
        if self.controller is None:
            raise TestbedError("add the controller first")
        if not 100 <= host <= 254:
            raise ValueError("management hosts use 172.31.255.100-254 (hypervisors use 11-99)")
        ns = self._add_ns(name)
        address = str(MGMT_NET.network_address + host)
        peer = self.ifname(f"g{host}")
        self._veth(ns, "eth0", self.controller.ns, peer)
        self._enslave(self.controller.ns, peer, self.controller.bridge)
        self._no_ipv6(ns, "eth0")
        self.run(ns, "ip", "addr", "add", f"{address}/{MGMT_NET.prefixlen}", "dev", "eth0")
        self.run(ns, "ip", "link", "set", "eth0", "up")
        return ns, address

    def add_l2_port(self, hv: Hypervisor, segment: Segment, port: str = "eth0") -> None:
        """Plug port ``port`` of the hypervisor's VM bridge into an L2
        segment: the recipe's ``eth0`` on ``br0`` in scenario 1, so ARP
        (sent NORMAL) reaches the VMs of the other hypervisors."""
        peer = self.ifname(f"h{hv.index}l{segment.index}")
        self._veth(hv.ns, port, segment.ns, peer, mtu=segment.mtu)
        self._enslave(segment.ns, peer, segment.bridge)
        self._quiet_port(hv.ns, port)
        self.run(hv.ns, "ethtool", "-K", port, "tx", "off")
        self.run(hv.ns, "ip", "link", "set", port, "up")
        hv.add_port(hv.bridge, port)

    def _add_mgmt_link(self, hv: Hypervisor) -> None:
        assert self.controller is not None
        hv.mgmt_iface = self.ifname("mgmt")
        peer = self.ifname(f"m{hv.index}")
        host = 10 + hv.index
        if host > 254:
            raise TestbedError("too many hypervisors for the management /24")
        hv.mgmt_address = str(MGMT_NET.network_address + host)
        self._veth(hv.ns, hv.mgmt_iface, self.controller.ns, peer)
        self._enslave(self.controller.ns, peer, self.controller.bridge)
        self._no_ipv6(hv.ns, hv.mgmt_iface)
        self.run(hv.ns, "ip", "addr", "add", f"{hv.mgmt_address}/{MGMT_NET.prefixlen}",
                 "dev", hv.mgmt_iface)
        self.run(hv.ns, "ip", "link", "set", hv.mgmt_iface, "up")

    def add_vm(self, hv: Hypervisor, name: str, mac: str, ip_with_prefix: str,
               ipv6: str | None = None, port_name: str | None = None) -> VM:
        """A VM namespace whose eth0 is a veth to port ``port_name`` (default
        vnetN, libvirt style) on the hypervisor's VM bridge. The hypervisor
        end is created inside the hypervisor's namespace, so port names
        need only be unique per hypervisor, as in the config."""
        if name in self.vms:
            raise ValueError(f"duplicate VM {name!r}")
        port = port_name or f"vnet{len(hv.vms)}"
        if len(port) > IFNAMSIZ:
            raise ValueError(f"port name {port!r} longer than {IFNAMSIZ}")
        ns = self._add_ns(name)
        vm = VM(self, name=name, ns=ns, hv=hv, port_name=port, mac=mac,
                ip=ip_with_prefix, ipv6=ipv6)
        self._veth(hv.ns, port, ns, vm.iface)
        self._quiet_port(hv.ns, port)
        self.run(hv.ns, "ip", "link", "set", port, "up")
        self.run(ns, "ip", "link", "set", vm.iface, "address", vm.mac)
        self.run(ns, "ip", "addr", "add", ip_with_prefix, "dev", vm.iface)
        if ipv6:
            self.run(ns, "ip", "-6", "addr", "add", ipv6, "dev", vm.iface, "nodad")
        else:  # no IPv6 EID: no router solicitations to show up as misses
            self._no_ipv6(ns, vm.iface)
        # Without this, TCP through the userspace datapath fails (ping works).
        self.run(ns, "ethtool", "-K", vm.iface, "tx", "off")
        self.run(ns, "ip", "link", "set", vm.iface, "up")
        hv.add_port(hv.bridge, port)
        hv.vms.append(vm)
        self.vms[name] = vm
        return vm

    # -- teardown ---------------------------------------------------------
    def track_pidfile(self, pidfile: Path) -> None:
        if pidfile not in self._pidfiles:
            self._pidfiles.append(pidfile)

    def owns_pid(self, pid: int) -> bool:
        """Only processes whose command line names our temp dir are ours
        (guards against a recycled PID)."""
        return pid_alive(pid) and str(self.tmpdir) in cmdline(pid)

    def daemon_pids(self) -> list[int]:
        """PIDs of the OVS daemons this run started and that still run."""
        pids = []
        for pidfile in self._pidfiles:
            pid = read_pid(pidfile)
            if pid is not None and self.owns_pid(pid):
                pids.append(pid)
        return pids

    @staticmethod
    def stop_child(proc: subprocess.Popen[bytes], timeout: float) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop our processes by PID (TERM, then KILL after ``timeout``),
        delete our namespaces, remove the temp dir. Idempotent; collects
        errors and raises the first only after doing everything it can."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        errors: list[BaseException] = []

        for proc in reversed(self._children):
            if proc.poll() is None:
                try:
                    self.stop_child(proc, timeout)
                except Exception as exc:  # keep tearing down
                    errors.append(exc)

        pids = self.daemon_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in pids:
            if self.owns_pid(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

        for ns in reversed(self.namespaces):
            if netns_inode(ns) is None:
                continue
            try:
                run_command(["ip", "netns", "del", ns], timeout=30)
            except Exception as exc:
                errors.append(exc)

        if not self.keep_tmp:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        if errors:
            raise TestbedError(f"teardown of {self.prefix} incomplete: {errors}")



def _rloc_mac(rloc: str) -> str:
    """A deterministic, locally administered MAC for br-phy derived from the
    RLOC (02:4c:xx:xx:xx:xx), so captures are readable run to run."""
    raw = ipaddress.ip_address(rloc).packed[-4:]
    return "02:4c:" + ":".join(f"{b:02x}" for b in raw)
