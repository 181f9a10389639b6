"""What a test works with in the lab: underlay segments, the controller's
namespace, routers, hypervisors (each a namespace running its own
``ovsdb-server`` and ``ovs-vswitchd``, userspace or DPDK build) and VMs
(namespaces with one interface on a hypervisor's bridge). The testbed
(lab/testbed.py) makes them and tears them down (docs/datapath.rst,
"The lab").
"""
from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from lisp_controller.pipeline.profiles import PROFILES

from lab.processes import CommandError, normalize_dpid, pidfile_locked, read_pid, threads_alive, wait_until

if TYPE_CHECKING:
    from lab.testbed import Testbed

OVS_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
# Debian's DPDK build of ovs-vswitchd (openvswitch-switch-dpdk), started by
# its full path: the system's ovs-vswitchd alternative is never touched.
OVS_VSWITCHD_DPDK = "/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk"
DATAPATHS = ("netdev", "dpdk")
# DPDK on a small machine without hugepages or NICs (docs/datapath.rst,
# "OVS-DPDK"): the main thread on core 0, one PMD thread on core 1 that
# sleeps up to 1 ms when idle (without pmd-maxsleep it keeps a core busy),
# 512 MB of ordinary memory, no PCI scan, no shared files between
# processes. OVS 3.1 adds --in-memory itself unless --legacy-mem is given.
DPDK_OTHER_CONFIG = {"dpdk-init": "true", "dpdk-lcore-mask": "0x1", "pmd-cpu-mask": "0x2",
                     "pmd-maxsleep": "1000"}
DPDK_EXTRA = "--no-huge -m 512 --no-pci --legacy-mem --no-shconf --no-telemetry"
# DPDK 22.11's af_packet driver takes Ethernet frames of at most 1518 bytes:
# a DPDK port on a veth has an MTU of 1500 at most.
DPDK_AF_PACKET_MAX_MTU = 1500
OFPP_LOCAL = 0xFFFFFFFE


@dataclass
class Segment:
    """An L2 underlay segment: a namespace holding one Linux bridge."""

    name: str
    ns: str
    bridge: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    index: int
    mtu: int


@dataclass
class Controller:
    """The controller's namespace; its Linux bridge is the management LAN."""

    ns: str
    address: str
    bridge: str
    testbed: "Testbed" = field(repr=False)

    def run(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.testbed.run(self.ns, *args, **kw)


@dataclass
class Router:
    """A namespace routing between segments (scenario 2's underlay router)."""

    name: str
    ns: str
    interfaces: dict[str, str]  # segment name -> interface in router ns
    addresses: dict[str, str]   # segment name -> address with prefix



class Hypervisor:
    """One hypervisor: a namespace with its own ovsdb-server + ovs-vswitchd.

    Every ``ovs-*`` command runs inside the namespace with OVS_RUNDIR,
    OVS_DBDIR, OVS_LOGDIR and OVS_SYSCONFDIR pointing at the private
    directory, so ovs-ofctl/ovs-appctl reach this daemon and no other.
    """

    def __init__(self, testbed: "Testbed", *, name: str, index: int, ns: str,
                 rundir: Path, rloc: str, prefixlen: int, segment: Segment | None,
                 datapath_id: str, bridge: str, tunnel_port: str, profile: str,
                 underlay_iface: str, gateway: str | None, datapath: str = "netdev") -> None:
        self.testbed = testbed
        self.name = name
        self.index = index
        self.ns = ns
        self.rundir = rundir
        self.rloc = rloc
        self.prefixlen = prefixlen
        self.segment = segment
        self.datapath_id = datapath_id
        self.bridge = bridge
        self.tunnel_port = tunnel_port
        self.profile = profile
        self.underlay_iface = underlay_iface
        self.underlay_bridge = "br-phy"
        self.gateway = gateway
        # "netdev": OVS's plain userspace datapath; "dpdk": the same
        # datapath in the DPDK build, every port a DPDK port.
        self.datapath = datapath
        self._vdevs = 0  # DPDK virtual devices made so far (their names must differ)
        self.mgmt_iface: str | None = None
        self.mgmt_address: str | None = None
        self.db_path = rundir / "conf.db"
        self.db_sock = rundir / "db.sock"
        self.ovsdb_pidfile = rundir / "ovsdb-server.pid"
        self.vswitchd_pidfile = rundir / "ovs-vswitchd.pid"
        self.vswitchd_ctl = rundir / "ovs-vswitchd.ctl"
        self.env = dict(os.environ, OVS_RUNDIR=str(rundir), OVS_DBDIR=str(rundir),
                        OVS_LOGDIR=str(rundir), OVS_SYSCONFDIR=str(rundir))
        self.vms: list[VM] = []

    def __repr__(self) -> str:
        return f"<Hypervisor {self.name} ns={self.ns} rloc={self.rloc}>"

    @property
    def db(self) -> str:
        return f"unix:{self.db_sock}"

    # -- running things ---------------------------------------------------
    def run(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run a command in this hypervisor's namespace with its OVS env."""
        kw.setdefault("env", self.env)
        return self.testbed.run(self.ns, *args, **kw)

    def vsctl(self, *args: str, wait: bool = True) -> str:
        """ovs-vsctl against this hypervisor's db; returns stdout.

        ``wait=False`` adds --no-wait (needed while ovs-vswitchd is down).
        """
        opts = [f"--db={self.db}", "--timeout=30"]
        if not wait:
            opts.append("--no-wait")
        return self.run("ovs-vsctl", *opts, *args).stdout

    def ofctl(self, *args: str) -> str:
        """ovs-ofctl speaking OpenFlow 1.3 (bridges only accept 1.3)."""
        return self.run("ovs-ofctl", "-O", "OpenFlow13", *args).stdout

    def appctl(self, *args: str, target: str | None = None) -> str:
        """ovs-appctl to ovs-vswitchd (by its control socket, whichever
        build runs) or to ``target``."""
        return self.run("ovs-appctl", "-t", target or str(self.vswitchd_ctl), *args).stdout

    def set_vlog(self, spec: str) -> str:
        """E.g. ``set_vlog("vconn:file:dbg")`` to count flow-mods switch-side."""
        return self.appctl("vlog/set", spec)

    # -- flows and ports --------------------------------------------------
    def dump_flows(self, table: int | None = None, bridge: str | None = None) -> list[str]:
        """Flows as ``ovs-ofctl dump-flows --no-stats`` prints them, one per
        item, reply headers dropped and leading spaces stripped."""
        args = ["dump-flows", "--no-stats", bridge or self.bridge]
        if table is not None:
            args.append(f"table={table}")
        out = self.ofctl(*args)
        return [line.strip() for line in out.splitlines()
                if line.strip() and not re.match(r"^(OFPST|NXST)_", line.strip())]

    def add_flows(self, lines: Iterable[str], bridge: str | None = None) -> None:
        """Install flows atomically (``ovs-ofctl --bundle add-flows``)."""
        path = self.testbed.tmpfile(f"{self.name}-flows-", ".txt")
        path.write_text("".join(line.rstrip("\n") + "\n" for line in lines))
        self.ofctl("--bundle", "add-flows", bridge or self.bridge, str(path))

    def port_numbers(self, bridge: str | None = None) -> dict[str, int]:
        """OpenFlow port numbers by port name, read from the switch itself
        (``dump-ports-desc``); the LOCAL port maps to OFPP_LOCAL."""
        out = self.ofctl("dump-ports-desc", bridge or self.bridge)
        ports: dict[str, int] = {}
        for m in re.finditer(r"^\s*(\d+|LOCAL)\(([^)]+)\):", out, re.M):
            ports[m.group(2)] = OFPP_LOCAL if m.group(1) == "LOCAL" else int(m.group(1))
        return ports

    # -- daemons ----------------------------------------------------------
    def add_vm_bridge(self, bridge: str, datapath_id: str | int, tunnel_port: str, profile: str,
                      local_ip: str | None = None) -> None:
        """A managed VM bridge as docs/datapath.rst says: netdev, secure,
        OpenFlow 1.3 only, fixed datapath ID, no in-band, and the profile's
        flow-based tunnel port. Several in one ovs-vswitchd need distinct
        `local_ip`s (identical flow-based tunnel ports collide)."""
        self.vsctl("add-br", bridge,
                   "--", "set", "Bridge", bridge, "datapath_type=netdev",
                   "fail_mode=secure", "protocols=OpenFlow13",
                   f"other-config:datapath-id={normalize_dpid(datapath_id)}",
                   "other-config:disable-in-band=true",
                   "--", "add-port", bridge, tunnel_port,
                   *PROFILES[profile].vsctl_args(tunnel_port, local_ip))

    def set_controller(self, bridge: str, address: str, of_port: int = 6653) -> None:
        self.set_controllers(bridge, [(address, of_port)])

    def set_controllers(self, bridge: str, targets: Sequence[tuple[str, int]]) -> None:
        """The bridge's controllers become exactly `targets` ((address,
        port) each), every one with max_backoff=1000, in one transaction
        (``ovs-vsctl set-controller br tcp:A tcp:B ...``): a secure bridge
        never passes through having none, which would flush its flows."""
        args: list[str] = []
        for i, (address, of_port) in enumerate(targets):
            host = f"[{address}]" if ":" in address else address
            args += ["--", f"--id=@c{i}", "create", "Controller", f"target=\"tcp:{host}:{of_port}\"",
                     "max_backoff=1000"]
        ids = ",".join(f"@c{i}" for i in range(len(targets)))
        self.vsctl(*args, "--", "set", "Bridge", bridge, f"controller=[{ids}]")

    def _start_ovsdb(self) -> None:
        self.testbed.track_pidfile(self.ovsdb_pidfile)
        self.run("ovsdb-server", str(self.db_path),
                 f"--remote=punix:{self.db_sock}",
                 "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
                 f"--pidfile={self.ovsdb_pidfile}",
                 f"--log-file={self.rundir / 'ovsdb-server.log'}",
                 f"--unixctl={self.rundir / 'ovsdb-server.ctl'}",
                 "--detach", "--no-chdir")

    @property
    def dpdk(self) -> bool:
        return self.datapath == "dpdk"

    def port_args(self, port: str) -> list[str]:
        """ovs-vsctl arguments making the port ``port`` (named like the
        veth it uses) a DPDK port in DPDK mode: DPDK's af_packet driver on
        that veth. Nothing in netdev mode (OVS opens the veth itself)."""
        if not self.dpdk:
            return []
        self._vdevs += 1
        # The kernel keeps seeing the frames af_packet reads: it must not
        # answer ARP for, or route, what arrives on the veth.
        for key, value in (("rp_filter", "1"), ("arp_ignore", "1")):
            self.run("sysctl", "-q", "-w", f"net.ipv4.conf.{port}.{key}={value}")
        # qdisc_bypass=0: what DPDK sends goes through the kernel's
        # transmit path, where a capture on the veth sees it too.
        return ["--", "set", "Interface", port, "type=dpdk",
                f"options:dpdk-devargs=net_af_packet{self._vdevs},iface={port},qdisc_bypass=0"]

    def add_port(self, bridge: str, port: str, *more: str) -> None:
        """Add the veth ``port`` (in this namespace) to ``bridge``, as a
        DPDK port in DPDK mode; ``more`` are further ovs-vsctl arguments."""
        self.vsctl("add-port", bridge, port, *self.port_args(port), *more)

    def interface_status(self, port: str) -> dict[str, str]:
        """``ovs-vsctl get Interface <port> status``: for a DPDK port the
        driver (``driver_name=net_af_packet``), for others little."""
        out = self.vsctl("get", "Interface", port, "status").strip()
        return dict(re.findall(r'([\w-]+)="?([^",}]*)"?', out))

    def _start_vswitchd(self) -> None:
        self.testbed.track_pidfile(self.vswitchd_pidfile)
        if self.dpdk:
            self._start_vswitchd_dpdk()
            return
        self.run("ovs-vswitchd", self.db, "--disable-system",
                 f"--pidfile={self.vswitchd_pidfile}", f"--unixctl={self.vswitchd_ctl}",
                 f"--log-file={self.rundir / 'ovs-vswitchd.log'}",
                 "--detach", "--no-chdir")

    def _start_vswitchd_dpdk(self) -> None:
        """The DPDK build, configured before it starts (DPDK reads its
        options once). The file prefix is unique per daemon, so several
        DPDK processes on one machine never share DPDK state."""
        config = {**DPDK_OTHER_CONFIG,
                  "dpdk-extra": f"{DPDK_EXTRA} --file-prefix={self.testbed.prefix}{self.name}"}
        self.vsctl("set", "Open_vSwitch", ".",
                   *(f'other_config:{k}="{v}"' for k, v in config.items()), wait=False)
        self.run(OVS_VSWITCHD_DPDK, self.db, "--disable-system",
                 f"--pidfile={self.vswitchd_pidfile}", f"--unixctl={self.vswitchd_ctl}",
                 f"--log-file={self.rundir / 'ovs-vswitchd.log'}",
                 "--detach", "--no-chdir", timeout=120)
        wait_until(lambda: self.vsctl("get", "Open_vSwitch", ".", "dpdk_initialized").strip() == "true",
                   timeout=60, what=f"DPDK initialized on {self.name}")

    def vswitchd_pid(self) -> int | None:
        return read_pid(self.vswitchd_pidfile)

    def restart_vswitchd(self) -> None:
        """Kill -9 ovs-vswitchd and start it again on the same database.

        Simulates a crash: flows are gone, ports and bridges come back from
        the db. The br-phy tap device dies with the daemon and is recreated
        without its address, so the RLOC (and gateway route) is re-applied.
        """
        pid = self.vswitchd_pid()
        if pid is not None and self.testbed.owns_pid(pid):
            os.kill(pid, signal.SIGKILL)
            # The main thread may show as dead (a zombie nobody reaps)
            # while its other threads still exit and hold the pidfile's
            # lock; the new daemon would then find itself "already
            # running" and abort. Wait for every thread and the lock.
            wait_until(lambda: not threads_alive(pid) and not pidfile_locked(self.vswitchd_pidfile),
                       timeout=10, interval=0.02, what=f"ovs-vswitchd {pid} gone and its pidfile released")
        self._start_vswitchd()
        self._configure_underlay_ip()
        wait_until(lambda: self.tunnel_port in self.port_numbers(), timeout=15,
                   what=f"{self.tunnel_port} back on {self.bridge}")

    # -- underlay ---------------------------------------------------------
    def _configure_underlay_ip(self) -> None:
        """RLOC on the br-phy internal port, so the namespace's kernel routes
        and ARPs for the userspace tunnels (ovs-userspace-tunneling guide)."""
        dev = self.underlay_bridge
        wait_until(lambda: self.run("ip", "link", "show", dev, check=False).returncode == 0,
                   timeout=15, what=f"{dev} device in {self.ns}")
        extra = ["nodad"] if ":" in self.rloc else []
        if not extra:  # IPv4 underlay: keep IPv6 chatter off the wire
            self.run("sysctl", "-q", "-w", f"net.ipv6.conf.{dev}.disable_ipv6=1")
        self.run("ip", "addr", "replace", f"{self.rloc}/{self.prefixlen}", "dev", dev, *extra)
        self.run("ip", "link", "set", dev, "up")
        if self.gateway:
            self.run("ip", "route", "replace", "default", "via", self.gateway, "dev", dev)
        net = ipaddress.ip_interface(f"{self.rloc}/{self.prefixlen}").network
        # ovs-vswitchd mirrors the kernel's routes; wait until it has them.
        wait_until(lambda: str(net) in self.appctl("ovs/route/show"), timeout=15,
                   what=f"OVS route to {net} on {self.name}")

    def add_underlay_address(self, address: str) -> None:
        """A second address on br-phy: the hypervisor is then reachable at
        two RLOCs (a multihomed site). Its flow-based tunnel port has no
        local_ip, so it takes packets for either."""
        extra = ["nodad"] if ":" in address else []
        self.run("ip", "addr", "add", f"{address}/{self.prefixlen}", "dev", self.underlay_bridge, *extra)

    def route_lookup(self, ip: str) -> str:
        return self.appctl("ovs/route/lookup", ip)


class VM:
    """A VM: a namespace with one interface (eth0) plugged into a hypervisor."""

    def __init__(self, testbed: "Testbed", *, name: str, ns: str, hv: Hypervisor,
                 port_name: str, mac: str, ip: str, ipv6: str | None) -> None:
        self.testbed = testbed
        self.name = name
        self.ns = ns
        self.hv = hv
        self.port_name = port_name
        self.iface = "eth0"
        self.mac = mac.lower()
        self.ip_with_prefix = ip
        self.ip = str(ipaddress.ip_interface(ip).ip)
        self.ipv6_with_prefix = ipv6
        self.ipv6 = str(ipaddress.ip_interface(ipv6).ip) if ipv6 else None

    def __repr__(self) -> str:
        return f"<VM {self.name} ns={self.ns} {self.ip} {self.mac}>"

    def run(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.testbed.run(self.ns, *args, **kw)

    def neigh_add(self, ip: str, mac: str) -> None:
        """Static neighbour entry (the blog's ``arp -f /etc/ethers``): the
        blog's VMs share one /24 across hypervisors, so nobody answers ARP."""
        self.run("ip", "neigh", "replace", ip, "lladdr", mac, "dev", self.iface,
                 "nud", "permanent")

    def ping(self, dst: str, count: int = 5, interval: float = 0.2,
             timeout: float = 2.0) -> tuple[int, int]:
        """Ping ``dst`` from inside this VM; return (sent, received).

        ``timeout`` is how long ping waits for each reply (-W); exactly
        ``count`` probes are sent. Refuses unless the process it runs in is
        inside one of this run's namespaces.
        """
        self.testbed.assert_ours(self.ns)
        cmd = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", str(timeout)]
        if ":" in dst:
            cmd.append("-6")
        cmd.append(dst)
        proc = self.testbed.run(self.ns, *cmd, check=False,
                                timeout=count * interval + timeout + 10)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", proc.stdout)
        if not m:
            raise CommandError(cmd, proc.returncode, proc.stdout, proc.stderr)
        return int(m.group(1)), int(m.group(2))

    def start_tcp_echo(self, port: int = 5000) -> subprocess.Popen[bytes]:
        """A TCP echo server in this VM (stopped at teardown); returns once
        it listens. TCP is what breaks without ``tx off`` or with too small
        an underlay MTU, so tests should push more than ping through."""
        self.testbed.assert_ours(self.ns)
        proc = self.testbed.spawn(self.ns, [sys.executable, "-c", _ECHO_SERVER, str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: f":{port} " in self.run("ss", "-Hltn").stdout,
                   timeout=10, what=f"echo server on {self.name}:{port}")
        return proc

    def tcp_roundtrip(self, dst: str, port: int = 5000, nbytes: int = 50_000,
                      timeout: float = 5.0) -> int:
        """Send ``nbytes`` to an echo server and return how many came back
        (0 when the connection fails or stalls)."""
        self.testbed.assert_ours(self.ns)
        proc = self.run(sys.executable, "-c", _ECHO_CLIENT, dst, str(port), str(nbytes),
                        str(timeout), check=False, timeout=timeout * 3 + 10)
        return int(proc.stdout.strip() or 0)

    def serve_http(self, directory: Path, port: int = 8000) -> subprocess.Popen[bytes]:
        """Python's http.server in this VM, on every IPv4 and IPv6 address,
        serving ``directory`` (stopped at teardown); returns once it listens."""
        self.testbed.assert_ours(self.ns)
        proc = self.testbed.spawn(self.ns, [sys.executable, "-m", "http.server", "--bind", "::",
                                            "--directory", str(directory), str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: f":{port} " in self.run("ss", "-Hltn").stdout,
                   timeout=10, what=f"HTTP server on {self.name}:{port}")
        return proc

    def http_get(self, host: str, path: str, port: int = 8000, timeout: float = 30.0,
                 stall: float = 5.0) -> tuple[int, str]:
        """Download ``http://host:port/path`` from inside this VM (Python's
        urllib); returns (bytes received, their SHA-256). A transfer that
        stalls for ``stall`` seconds or runs past ``timeout`` ends there,
        with what arrived so far (the overlay MTU black hole gives 0)."""
        self.testbed.assert_ours(self.ns)
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/{path.lstrip('/')}"
        proc = self.run(sys.executable, "-c", _HTTP_CLIENT, url, str(timeout), str(stall),
                        check=False, timeout=timeout + stall + 30)
        size, digest = (proc.stdout.split() + ["0", ""])[:2]
        return int(size), digest

    def udp_flood(self, dst: str, size: int, seconds: float, port: int = 9) -> int:
        """Send UDP datagrams of ``size`` bytes (IP packet) to ``dst`` as
        fast as one Python process can for ``seconds``, with DF set and the
        path MTU ignored (IP_PMTUDISC_PROBE): every one stays oversized,
        whatever ICMP comes back. Returns how many were sent."""
        self.testbed.assert_ours(self.ns)
        proc = self.run(sys.executable, "-c", _UDP_FLOOD, dst, str(port), str(size), str(seconds),
                        timeout=seconds + 30)
        return int(proc.stdout.strip())

    def wait_reachable(self, dst: str, timeout: float = 20.0) -> None:
        """Warm-up: OVS drops tunnelled packets while it ARPs for the remote
        RLOC, so poll single pings until one gets through (with a deadline)."""
        wait_until(lambda: self.ping(dst, count=1, timeout=0.5)[1] == 1,
                   timeout=timeout, interval=0.1, what=f"{self.name} -> {dst} ping")


_ECHO_SERVER = """
import socket, sys
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", port))
s.listen()
while True:
    c, _ = s.accept()
    with c:
        data = b""
        while chunk := c.recv(65536):
            data += chunk
        c.sendall(data)
"""

_ECHO_CLIENT = """
import socket, sys
host, port, n, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
got = 0
try:
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"x" * n)
        s.shutdown(socket.SHUT_WR)
        while chunk := s.recv(65536):
            got += len(chunk)
except OSError:
    pass
print(got)
"""


_HTTP_CLIENT = """
import hashlib, sys, time, urllib.request
url, timeout, stall = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
deadline, got, digest = time.monotonic() + timeout, 0, hashlib.sha256()
try:
    with urllib.request.urlopen(url, timeout=stall) as resp:
        while time.monotonic() < deadline and (chunk := resp.read(65536)):
            got += len(chunk)
            digest.update(chunk)
except OSError:
    pass
print(got, digest.hexdigest())
"""


_UDP_FLOOD = """
import socket, sys, time
dst, port, size, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
v6 = ":" in dst
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
if v6:
    s.setsockopt(socket.IPPROTO_IPV6, 23, 3)  # IPV6_MTU_DISCOVER = IPV6_PMTUDISC_PROBE
else:
    s.setsockopt(socket.IPPROTO_IP, 10, 3)  # IP_MTU_DISCOVER = IP_PMTUDISC_PROBE: DF, no PMTU
payload = bytes(size - (48 if v6 else 28))
sent, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    for _ in range(100):
        try:
            s.sendto(payload, (dst, port))
            sent += 1
        except OSError:  # a full socket buffer, an ICMP error reported back: keep going
            pass
print(sent)
"""
