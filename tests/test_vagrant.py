"""The Vagrantfile: validated by Vagrant itself, consistent with its config,
and its provisioning (the testbed's whole-host mode) run for real, with
namespaces standing in for the boxes."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lisp_controller.config import load_config
from lab.processes import wait_until

ROOT = Path(__file__).resolve().parent.parent
VAGRANTFILE = ROOT / "Vagrantfile"
CONFIG = ROOT / "configs" / "vagrant.toml"


def _validate(directory: Path) -> subprocess.CompletedProcess:
    # No provider (VirtualBox, libvirt) is installed in CI: validate the
    # Vagrantfile's own configuration and skip the provider blocks.
    return subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=directory,
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, VAGRANT_HOME=str(directory / ".vagrant.d")))


def test_vagrantfile_validates_and_a_broken_one_does_not(tmp_path):
    if shutil.which("vagrant") is None:
        pytest.fail("vagrant is not installed: run scripts/install.sh")
    good = tmp_path / "good"
    good.mkdir()
    shutil.copy(VAGRANTFILE, good / "Vagrantfile")
    result = _validate(good)
    assert result.returncode == 0 and "validated successfully" in result.stdout, result
    # The check has teeth: a misspelt setting fails it.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "Vagrantfile").write_text(VAGRANTFILE.read_text().replace("box.vm.hostname", "box.vm.hostnme"))
    result = _validate(bad)
    assert result.returncode != 0 and "hostnme" in result.stdout + result.stderr, result


def test_vagrantfile_matches_its_config():
    """Each box's address and datapath ID are a bridge of configs/vagrant.toml,
    and the box running the controller is the one the config listens on."""
    boxes = re.findall(r'\["(\w+)", "([\d.]+)", "([0-9a-f]{16})", (true|false)\]', VAGRANTFILE.read_text())
    config = load_config(CONFIG)
    assert {(addr, int(dpid, 16)) for _, addr, dpid, _ in boxes} == \
        {(str(b.rloc), b.datapath_id) for b in config.overlay.bridges}
    assert [addr for _, addr, _, serve in boxes if serve == "true"] == [config.openflow_host]


def _start_box(testbed, ns: str, prefix: str, bridge: str, serve: bool, tmp_path: Path):
    out = tmp_path / f"{prefix}.out"
    cmd = [sys.executable, "-m", "lab.scenario", "host", "-c", str(CONFIG),
           "--bridge", bridge, "--nic", "eth1", "--prefix", prefix,
           "--log", str(tmp_path / f"{prefix}-controller.log")] + (["--serve"] if serve else [])
    with open(out, "wb") as f:
        proc = testbed.spawn(ns, cmd, stdout=f, stderr=subprocess.STDOUT,
                             env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return proc, out


def _namespaces(prefix: str) -> list[str]:
    return [n for n in os.listdir("/run/netns") if n.startswith(prefix + "-")]


def test_whole_host_mode_provisions_boxes_that_ping(testbed, tmp_path):
    """What `vagrant up` runs on each box (scripts/vagrant-provision.sh runs
    the same command), with a namespace per box: a NIC holding the box's
    address on a shared 1500-byte network, nothing else."""
    lan = testbed.add_segment("vagrant", "192.168.56.0/24", mtu=1500)
    box1 = testbed.add_box("box1", lan, "192.168.56.11/24")
    box2 = testbed.add_box("box2", lan, "192.168.56.12/24")
    p1, p2 = testbed.prefix[2:] + "b1", testbed.prefix[2:] + "b2"
    procs = []
    try:
        procs.append(_start_box(testbed, box1, p1, "0000000000005611", True, tmp_path))
        procs.append(_start_box(testbed, box2, p2, "0000000000005612", False, tmp_path))
        for proc, out in procs:
            wait_until(lambda: proc.poll() is not None or out.read_text().endswith("ready\n"),
                       timeout=90, what=f"{out.name} ready")
            assert proc.poll() is None, out.read_text()
        # The RLOC moved from the NIC to OVS's br-phy.
        addrs = testbed.run(box1, "ip", "-o", "addr", "show").stdout
        assert re.search(r"br-phy\s+inet 192\.168\.56\.11/24", addrs), addrs
        assert not re.search(r"eth1\s+inet ", addrs), addrs

        def in_vm(vm_ns: str, *cmd: str) -> subprocess.CompletedProcess:
            """Run in a VM namespace of a box. `ip netns exec` gave each box
            process a mount namespace of its own, and the VM namespaces it
            made are mounted only there: enter it first."""
            box_proc = procs[0][0] if vm_ns.startswith(p1) else procs[1][0]
            assert vm_ns in _namespaces(vm_ns.split("-")[0])  # a namespace a box made
            return subprocess.run(["nsenter", f"--mount=/proc/{box_proc.pid}/ns/mnt", "ip", "netns", "exec",
                                   vm_ns, *cmd], capture_output=True, text=True, timeout=30)

        def ping(vm_ns: str, dst: str, count: int) -> int:
            r = in_vm(vm_ns, "ping", "-n", "-c", str(count), "-i", "0.05", "-W", "1", dst)
            m = re.search(r"(\d+) received", r.stdout)
            assert m, (r.stdout, r.stderr)
            return int(m.group(1))

        vm20, vm21, vm30 = f"{p1}-vm-vnet0", f"{p1}-vm-vnet1", f"{p2}-vm-vnet0"
        for src, dst in ((vm20, "10.1.1.30"), (vm30, "10.1.1.20"), (vm21, "10.1.1.30"), (vm30, "10.1.1.21")):
            wait_until(lambda: ping(src, dst, 1) == 1, timeout=30, what=f"{src} -> {dst}")
            assert ping(src, dst, 10) == 10, (src, dst)
        # Full-size IP packets fit through the 1500-byte box network
        # because the VMs' MTU leaves room for the tunnel header.
        r = in_vm(vm20, "ping", "-n", "-c", "3", "-M", "do", "-s", "1372", "10.1.1.30")
        assert " 0% packet loss" in r.stdout, r.stdout
    finally:
        for proc, _ in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, out in procs:
            proc.wait(60)
    # SIGTERM removed everything the boxes made.
    assert _namespaces(p1) == [] and _namespaces(p2) == []
