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
Run ``python -m lab.testbed --help`` for the small CLI.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import fcntl
import ipaddress
import os
import re
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from lisp_controller.pipeline.profiles import DEFAULT_PROFILE, PROFILES
from lab.console import stop_on_sigterm, until_interrupted

T = TypeVar("T")

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
MGMT_NET = ipaddress.ip_network("172.31.255.0/24")
CONTROLLER_ADDRESS = "172.31.255.1"
IFNAMSIZ = 15  # Linux interface names: at most 15 characters
OFPP_LOCAL = 0xFFFFFFFE
LISP_DATA_PORT = 4341
# Underlay MTU: 1500 + room for an encapsulation header over IPv4 or IPv6
# (lisp-gpe adds 36 bytes over IPv4: IP 20 + UDP 8 + header 8; gre-l3 28).
UNDERLAY_MTU = 1600
# The namespace this process runs in, for a hypervisor that is a whole
# (disposable) host: see Testbed.add_host_hypervisor.
HOST = "@host"


class TestbedError(RuntimeError):
    """Anything the testbed could not do; the message says what and why."""

    __test__ = False  # not a pytest test class despite the name


class CommandError(TestbedError):
    """A command failed; carries the command line and its stderr."""

    def __init__(self, cmd: Sequence[str], returncode: int, stdout: str, stderr: str):
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"command failed (exit {returncode}): {' '.join(self.cmd)}\n"
            f"stderr: {stderr.strip()}")


class UnsafeTarget(TestbedError):
    """Refused: the action would run outside this run's namespaces."""


# --------------------------------------------------------------------------
# Small helpers


def wait_until(predicate: Callable[[], T], timeout: float = 10.0,
               interval: float = 0.1, what: str | None = None) -> T:
    """Poll ``predicate`` until it returns something truthy; return that.

    Tests must never sleep a fixed time (too short on a busy CI box, too long
    everywhere else): they wait for the condition, with a deadline. Raises
    TimeoutError naming ``what`` (or the predicate) and its last result.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            name = what or getattr(predicate, "__name__", repr(predicate))
            raise TimeoutError(f"timed out after {timeout}s waiting for {name}"
                               f" (last result: {result!r})")
        time.sleep(interval)


def _run(cmd: Sequence[str], *, env: dict[str, str] | None = None,
         check: bool = True, timeout: float = 60.0,
         input: str | None = None) -> subprocess.CompletedProcess[str]:
    """subprocess.run with captured text output and a readable error."""
    try:
        proc = subprocess.run(list(cmd), env=env, capture_output=True, text=True,
                              timeout=timeout, input=input)
    except subprocess.TimeoutExpired as exc:
        raise CommandError(cmd, -1, str(exc.stdout or ""),
                           f"timed out after {timeout}s") from None
    if check and proc.returncode != 0:
        raise CommandError(cmd, proc.returncode, proc.stdout, proc.stderr)
    return proc


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (PID 1 may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _threads_alive(pid: int) -> bool:
    """True while any thread of ``pid`` runs (not a zombie)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return any(_pid_alive(int(t)) for t in tids)


def _pidfile_locked(pidfile: Path) -> bool:
    """Does a process hold ``pidfile``'s lock? OVS daemons hold a write
    lock on their pidfile while they run, and a new one aborts if it
    finds it taken. Asked with F_GETLK, which takes no lock itself."""
    try:
        fd = os.open(pidfile, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        query = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        kind = struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, query))[0]
        return kind != fcntl.F_UNLCK
    finally:
        os.close(fd)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _normalize_dpid(datapath_id: str | int) -> str:
    """16 lowercase hex digits, the form other-config:datapath-id wants."""
    if isinstance(datapath_id, int):
        value = datapath_id
    else:
        value = int(datapath_id.replace(":", ""), 16)
    if not 0 <= value < 2**64:
        raise ValueError(f"datapath id out of range: {datapath_id!r}")
    return f"{value:016x}"


def _netns_inode(name: str) -> int | None:
    try:
        return os.stat(f"/run/netns/{name}").st_ino
    except OSError:
        return None


def current_netns() -> str | None:
    """Name of the network namespace the calling *thread* is in, or None.

    The thread-aware twin of ``ip netns identify``: it also sees a namespace
    entered with :func:`netns` (setns changes only the calling thread).
    """
    ino = os.stat("/proc/thread-self/ns/net").st_ino
    try:
        names = sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return None
    for name in names:
        if _netns_inode(name) == ino:
            return name
    return None


_CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def netns(name: str) -> Iterator[None]:
    """Run the body with the calling thread inside namespace ``name``.

    For in-process clients (REST calls, sockets) and for processes started
    inside the body, which inherit the namespace. Only the calling thread
    moves; it is moved back on exit even if the body raises. Prefer
    :meth:`Testbed.netns`, which also checks the namespace is ours.
    """
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(original)
    finally:
        os.close(target)
        os.close(original)


# --------------------------------------------------------------------------
# The objects a test works with


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
                   f"other-config:datapath-id={_normalize_dpid(datapath_id)}",
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
        self.testbed._track_pidfile(self.ovsdb_pidfile)
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
        self.testbed._track_pidfile(self.vswitchd_pidfile)
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
        return _read_pid(self.vswitchd_pidfile)

    def restart_vswitchd(self) -> None:
        """Kill -9 ovs-vswitchd and start it again on the same database.

        Simulates a crash: flows are gone, ports and bridges come back from
        the db. The br-phy tap device dies with the daemon and is recreated
        without its address, so the RLOC (and gateway route) is re-applied.
        """
        pid = self.vswitchd_pid()
        if pid is not None and self.testbed._owns_pid(pid):
            os.kill(pid, signal.SIGKILL)
            # The main thread may show as dead (a zombie nobody reaps)
            # while its other threads still exit and hold the pidfile's
            # lock; the new daemon would then find itself "already
            # running" and abort. Wait for every thread and the lock.
            wait_until(lambda: not _threads_alive(pid) and not _pidfile_locked(self.vswitchd_pidfile),
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


class Capture:
    """A dumpcap capture inside one of our namespaces, decoded with tshark.

    Start waits for dumpcap's "Capturing on" line so no packet sent after
    start() is missed; stop() signals dumpcap by PID so it flushes the file.
    """

    def __init__(self, testbed: "Testbed", ns: str, iface: str, path: Path) -> None:
        self.testbed = testbed
        self.ns = ns
        self.iface = iface
        self.path = path
        self.stderr_path = path.with_suffix(".stderr")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> "Capture":
        self.testbed.assert_ours(self.ns)
        with open(self.stderr_path, "wb") as err:
            self.proc = self.testbed.spawn(
                self.ns, ["dumpcap", "-i", self.iface, "-w", str(self.path)],
                stdout=subprocess.DEVNULL, stderr=err)

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise TestbedError(f"dumpcap exited: {self.stderr_path.read_text()}")
            return "Capturing on" in self.stderr_path.read_text(errors="replace")

        wait_until(ready, timeout=timeout, what=f"dumpcap on {self.iface}")
        return self

    def stop(self, settle: float = 0.6, timeout: float = 10.0) -> None:
        """Stop dumpcap once it has written everything already on the wire.

        libpcap hands packets over a ring-buffer block at a time (the block
        retires after dumpcap's 250 ms read timeout), and dumpcap exits on
        SIGTERM without draining the current block: stopping right after the
        traffic loses its last packets. So first wait until dumpcap's
        "Packets: N" progress lines (stderr) have been quiet for ``settle``
        seconds (at most ``timeout``), then signal it by PID.
        """
        if self.proc is None or self.proc.poll() is not None:
            return
        last = [-1, time.monotonic()]

        def quiet() -> bool:
            size = self.stderr_path.stat().st_size
            now = time.monotonic()
            if size != last[0]:
                last[:] = [size, now]
                return False
            return now - last[1] >= settle

        with contextlib.suppress(TimeoutError):
            wait_until(quiet, timeout=timeout, interval=0.05)
        self.testbed._stop_child(self.proc, timeout)

    def __enter__(self) -> "Capture":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def decode(self, fields: Sequence[str], display_filter: str | None = None,
               extra: Sequence[str] = ()) -> list[str]:
        """``tshark -r FILE -d udp.port==4341,lisp-data -T fields -e ...``;
        one tab-separated line per packet (empty lines dropped)."""
        cmd = ["tshark", "-r", str(self.path), "-d", f"udp.port=={LISP_DATA_PORT},lisp-data",
               "-T", "fields"]
        for f in fields:
            cmd += ["-e", f]
        if display_filter:
            cmd += ["-Y", display_filter]
        cmd += list(extra)
        out = _run(cmd, timeout=60).stdout
        return [line for line in out.splitlines() if line.strip()]


# --------------------------------------------------------------------------
# The testbed


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
        existing = set(_list_netns())
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
        return _run([*prefix, *args], env=env, check=check, timeout=timeout, input=input)

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
        names = _run(["ip", "netns", "exec", ns, "ip", "netns", "identify"],
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
        _run(["ip", "netns", "add", ns])
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
                        datapath_id=_normalize_dpid(datapath_id), bridge=bridge,
                        tunnel_port=tunnel_port, profile=profile,
                        underlay_iface=underlay_iface, gateway=gateway, datapath=datapath)
        self.hypervisors[name] = hv
        return hv

    def _setup_ovs(self, hv: Hypervisor, mtu: int) -> None:
        """Daemons, br-phy holding the underlay interface and the RLOC (as in
        OVS's userspace tunnelling guide), the VM bridge and its tunnel port."""
        # ovsdb-tool touches only a file, so it may run anywhere.
        _run(["ovsdb-tool", "create", str(hv.db_path), OVS_SCHEMA])
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
    def _track_pidfile(self, pidfile: Path) -> None:
        if pidfile not in self._pidfiles:
            self._pidfiles.append(pidfile)

    def _owns_pid(self, pid: int) -> bool:
        """Only processes whose command line names our temp dir are ours
        (guards against a recycled PID)."""
        return _pid_alive(pid) and str(self.tmpdir) in _cmdline(pid)

    def daemon_pids(self) -> list[int]:
        """PIDs of the OVS daemons this run started and that still run."""
        pids = []
        for pidfile in self._pidfiles:
            pid = _read_pid(pidfile)
            if pid is not None and self._owns_pid(pid):
                pids.append(pid)
        return pids

    @staticmethod
    def _stop_child(proc: subprocess.Popen[bytes], timeout: float) -> None:
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
                    self._stop_child(proc, timeout)
                except Exception as exc:  # keep tearing down
                    errors.append(exc)

        pids = self.daemon_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(_pid_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in pids:
            if self._owns_pid(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

        for ns in reversed(self.namespaces):
            if _netns_inode(ns) is None:
                continue
            try:
                _run(["ip", "netns", "del", ns], timeout=30)
            except Exception as exc:
                errors.append(exc)

        if not self.keep_tmp:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        if errors:
            raise TestbedError(f"teardown of {self.prefix} incomplete: {errors}")


def _list_netns() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def _rloc_mac(rloc: str) -> str:
    """A deterministic, locally administered MAC for br-phy derived from the
    RLOC (02:4c:xx:xx:xx:xx), so captures are readable run to run."""
    raw = ipaddress.ip_address(rloc).packed[-4:]
    return "02:4c:" + ":".join(f"{b:02x}" for b in raw)


# --------------------------------------------------------------------------
# The seed topology (the blog's two hypervisors) and its controller-free flows


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
        prog="python -m lab.testbed",
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
