"""The namespace testbed, and proof that the datapath carries LISP-shaped
traffic with hand-written flows, before any controller exists.

The flows (lab.seed.static_flows) are the recipe's table 0
with destination-keyed map-cache rules: what the controller will compile
(docs/datapath.rst, "The pipeline") collapsed into one table.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import require_lab
from lab.netns import current_netns
from lab.processes import CommandError, UnsafeTarget, wait_until
from lab.seed import SEED_IID, SeedTopology, build_seed_topology, install_static_seed, static_flows
from lab.testbed import Testbed

PING_COUNT = 10


def _netns_list() -> set[str]:
    return set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()


@pytest.mark.parametrize("profile", ["lisp-gpe", "gre-l3"])
def test_seed_topology_pings_through_tunnel_without_controller(testbed, profile):
    seed = build_seed_topology(testbed, profile=profile)
    install_static_seed(seed)

    for hv, local in ((seed.hv1, seed.vm1), (seed.hv2, seed.vm2)):
        ports = hv.port_numbers()
        assert {"lisp0", "vnet0"} <= set(ports)
        flows = hv.dump_flows(table=0)
        assert len(flows) == 4, flows
        assert any(f"set_field:{local.mac}->eth_dst" in f for f in flows), flows

    # Warm-up: the first packets die while OVS ARPs for the remote RLOC.
    seed.vm1.wait_reachable(seed.vm2.ip)
    seed.vm2.wait_reachable(seed.vm1.ip)

    capture = testbed.capture(seed.hv1.ns, seed.hv1.underlay_iface, profile)
    with capture:
        assert seed.vm1.ping(seed.vm2.ip, count=PING_COUNT) == (PING_COUNT, PING_COUNT)
        assert seed.vm2.ping(seed.vm1.ip, count=PING_COUNT) == (PING_COUNT, PING_COUNT)

    # 10 requests + 10 replies each way, all of them on the tunnel: tshark
    # prints the outer (RLOC) and inner (EID) address of each packet.
    rlocs = {seed.hv1.rloc, seed.hv2.rloc}
    eids = {seed.vm1.ip, seed.vm2.ip}
    if profile == "lisp-gpe":
        rows = capture.decode(["ip.src", "ip.dst", "lisp-data.flags", "lisp-data.iid"],
                              display_filter="lisp-data && icmp")
    else:
        rows = capture.decode(["ip.src", "ip.dst", "gre.key"], display_filter="gre && icmp")
    assert len(rows) == 4 * PING_COUNT, rows
    for row in rows:
        src, dst, *header = row.split("\t")
        (outer_src, inner_src), (outer_dst, inner_dst) = src.split(","), dst.split(",")
        assert {outer_src, outer_dst} == rlocs, row
        assert {inner_src, inner_dst} == eids, row
        if profile == "lisp-gpe":
            flags, iid = header
            assert int(flags, 16) & 0x08, row  # I bit: instance ID present
            assert int(iid) == SEED_IID, row
        else:
            assert int(header[0], 16) == SEED_IID, row  # GRE key = IID

    # Full-size TCP segments too (needs tx off on the VMs and an underlay
    # MTU with room for the tunnel header).
    seed.vm2.start_tcp_echo()
    assert seed.vm1.tcp_roundtrip(seed.vm2.ip, nbytes=200_000) == 200_000
    # No EID address ever shows up un-encapsulated on the underlay.
    assert capture.decode(["ip.dst"], display_filter="ip.dst == 10.1.1.0/24 && !udp && !gre") == []


def test_routed_underlay_through_router_namespace(testbed):
    """Scenario 2's shape: the RLOCs sit on two segments joined by a router."""
    a = testbed.add_segment("a", "192.168.1.0/24")
    b = testbed.add_segment("b", "192.168.2.0/24")
    router = testbed.add_router("rtr", [a, b], ["192.168.1.1/24", "192.168.2.1/24"])
    hv1 = testbed.add_hypervisor("hv1", "192.168.1.249", 24, a, 1, gateway="192.168.1.1")
    hv2 = testbed.add_hypervisor("hv2", "192.168.2.252", 24, b, 2, gateway="192.168.2.1")
    vm1 = testbed.add_vm(hv1, "vm1", "52:54:00:00:00:01", "10.1.1.20/24")
    vm2 = testbed.add_vm(hv2, "vm2", "52:54:00:00:00:02", "10.1.1.30/24")
    assert "gateway 192.168.1.1" in hv1.route_lookup(hv2.rloc)
    install_static_seed(SeedTopology(a, hv1, hv2, vm1, vm2))
    vm1.wait_reachable(vm2.ip)
    vm2.wait_reachable(vm1.ip)

    capture = testbed.capture(router.ns, router.interfaces["b"], "routed")
    with capture:
        assert vm1.ping(vm2.ip, count=PING_COUNT) == (PING_COUNT, PING_COUNT)
    rows = capture.decode(["ip.ttl", "lisp-data.iid"], display_filter="lisp-data && icmp")
    assert len(rows) == 2 * PING_COUNT
    # The router decrements the outer TTL only; the EID packet is untouched.
    assert {row for row in rows} == {"63,64\t1000", "64,64\t1000"}


def test_bridges_are_configured_for_the_controller(testbed):
    seed = build_seed_topology(testbed, controller=True)
    ctl = seed.controller
    assert ctl is not None and ctl.address == "172.31.255.1"
    for hv, dpid in ((seed.hv1, "00008ad828ce7949"), (seed.hv2, "00001e2e0e0cf040")):
        assert f"dpid:{dpid}" in hv.ofctl("show", "br2")
        assert hv.vsctl("get", "Bridge", "br2", "fail_mode").strip() == "secure"
        assert hv.vsctl("get", "Bridge", "br2", "protocols").strip() == "[OpenFlow13]"
        assert hv.vsctl("get-controller", "br2").strip() == "tcp:172.31.255.1:6653"
        assert hv.vsctl("get", "Controller", "br2", "max_backoff").strip() == "1000"
        # Secure bridge, no controller listening: no flows at all.
        assert hv.dump_flows() == []
        # Management LAN: hvN is 172.31.255.(10+N) and reaches the controller.
        assert hv.mgmt_address == f"172.31.255.{10 + hv.index}"
        testbed.run(hv.ns, "ping", "-c", "1", "-W", "2", ctl.address)
    # Nothing of ours in the root namespace.
    root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert testbed.prefix not in root_links


def test_restart_vswitchd_keeps_ports_and_loses_flows(testbed):
    seed = build_seed_topology(testbed)
    install_static_seed(seed)
    seed.vm1.wait_reachable(seed.vm2.ip)
    ports = seed.hv1.port_numbers()
    old_pid = seed.hv1.vswitchd_pid()

    seed.hv1.restart_vswitchd()

    assert seed.hv1.vswitchd_pid() != old_pid
    assert seed.hv1.port_numbers() == ports
    assert seed.hv1.dump_flows() == []
    seed.hv1.add_flows(static_flows(seed.hv1, seed.vm1, seed.vm2, seed.hv2.rloc))
    seed.vm1.wait_reachable(seed.vm2.ip)
    assert seed.vm1.ping(seed.vm2.ip, count=PING_COUNT) == (PING_COUNT, PING_COUNT)


def test_a_pidfile_lock_is_seen_while_held_and_not_after(tmp_path):
    """restart_vswitchd waits for this before starting the new daemon: the
    old one's threads may hold the lock after its main thread died."""
    from lab.processes import pidfile_locked, threads_alive

    pidfile = tmp_path / "daemon.pid"
    assert not pidfile_locked(pidfile)  # no file: nothing holds it
    holder = subprocess.Popen([sys.executable, "-c", f"""
import fcntl, sys, time
f = open({str(pidfile)!r}, "w")
fcntl.lockf(f, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(30)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert pidfile_locked(pidfile) and threads_alive(holder.pid)
        assert pidfile_locked(pidfile)  # asking takes no lock of its own
    finally:
        holder.kill()
        holder.wait()
    assert not pidfile_locked(pidfile) and not threads_alive(holder.pid)


def test_restart_vswitchd_again_and_again(testbed):
    from lab.processes import pidfile_locked

    seed = build_seed_topology(testbed)
    pids = {seed.hv1.vswitchd_pid()}
    for _ in range(5):
        assert pidfile_locked(seed.hv1.vswitchd_pidfile)  # what the wait looks at is real
        seed.hv1.restart_vswitchd()
        pids.add(seed.hv1.vswitchd_pid())
    assert len(pids) == 6 and len(testbed.daemon_pids()) >= 2


@pytest.mark.ovs
def test_teardown_removes_namespaces_and_daemons_even_on_error():
    require_lab()
    seen: dict[str, object] = {}
    with pytest.raises(RuntimeError, match="boom"):
        with Testbed() as tb:
            seg = tb.add_segment("u", "192.168.1.0/24")
            hv = tb.add_hypervisor("hv1", "192.168.1.249", 24, seg, 1)
            tb.add_vm(hv, "vm1", "52:54:00:00:00:01", "10.1.1.20/24")
            seen.update(namespaces=list(tb.namespaces), pids=tb.daemon_pids(),
                        tmpdir=tb.tmpdir)
            assert len(seen["pids"]) == 2  # ovsdb-server, ovs-vswitchd
            assert set(tb.namespaces) <= _netns_list()
            raise RuntimeError("boom")
    assert not set(seen["namespaces"]) & _netns_list()
    for pid in seen["pids"]:
        assert not _alive(pid), pid
    assert not Path(seen["tmpdir"]).exists()
    tb.close()  # idempotent


def _alive(pid: int) -> bool:
    """Running and not a zombie (our PID 1 may reap detached daemons late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _wait_for_line(proc: subprocess.Popen, marker: str, timeout: float = 60) -> list[str]:
    """Lines of proc's stdout up to the one containing marker."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"process ended early: {lines} {proc.stderr.read()}")
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError(f"no {marker!r} within {timeout}s: {lines}")


@pytest.mark.ovs
def test_atexit_tears_down_a_testbed_nobody_closed():
    require_lab()
    code = ("from lab.testbed import Testbed\n"
            "tb = Testbed()\n"
            "seg = tb.add_segment('u', '192.168.1.0/24')\n"
            "hv = tb.add_hypervisor('hv1', '192.168.1.249', 24, seg, 1)\n"
            "print(tb.prefix, tb.tmpdir, *tb.daemon_pids())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    prefix, tmpdir, pids = out[0], out[1], [int(p) for p in out[2:]]
    assert len(pids) == 2
    assert not [ns for ns in _netns_list() if ns.startswith(prefix + "-")]
    assert not any(_alive(pid) for pid in pids)
    assert not Path(tmpdir).exists()


@pytest.mark.ovs
def test_cli_demo_topology_builds_and_tears_down_on_sigterm():
    require_lab()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab.seed", "demo-topology", "--static-flows"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        lines = _wait_for_line(proc, "Ctrl-C")
        namespaces = [line.split()[1] for line in lines if line.startswith("  namespace ")]
        assert len(namespaces) == 5  # segment, hv1, hv2, vm1, vm2
        assert set(namespaces) <= _netns_list()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not set(namespaces) & _netns_list()


def test_refuses_namespaces_it_did_not_create(testbed):
    seg = testbed.add_segment("u", "192.168.1.0/24")
    hv = testbed.add_hypervisor("hv1", "192.168.1.249", 24, seg, 1)
    vm = testbed.add_vm(hv, "vm1", "52:54:00:00:00:01", "10.1.1.20/24")
    with pytest.raises(UnsafeTarget):
        testbed.run("not-a-testbed-ns", "true")
    vm.ns = "not-a-testbed-ns"
    with pytest.raises(UnsafeTarget):
        vm.ping("10.1.1.30", count=1)
    # In-process: the thread moves into our namespace and back.
    assert current_netns() is None
    with testbed.netns(seg.ns):
        assert current_netns() == seg.ns
    assert current_netns() is None


def test_command_errors_name_the_command_and_stderr(testbed):
    seg = testbed.add_segment("u", "192.168.1.0/24")
    with pytest.raises(CommandError) as info:
        testbed.run(seg.ns, "ip", "link", "set", "no-such-dev", "up")
    assert "no-such-dev" in str(info.value) and info.value.stderr


def test_wait_until_returns_value_or_times_out():
    assert wait_until(lambda: 42, timeout=1) == 42
    with pytest.raises(TimeoutError, match="never"):
        wait_until(lambda: False, timeout=0.2, interval=0.05, what="never")


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "lab.seed", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "demo-topology" in out
