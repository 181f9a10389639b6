"""Shared fixtures and the test markers.

Every test is either `unit` (no root, no daemons: `pytest -m unit` gives a
contributor without root a green run) or `ovs` (real Open vSwitch daemons,
network namespaces, the controller as a process, a browser: needs root).
A test is `ovs` when it uses the `testbed` or `etcd_cluster` fixture or says
so with `@pytest.mark.ovs`; every other test is `unit`.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from lab.etcd import EtcdCluster
from lab.nodes import OVS_VSWITCHD_DPDK
from lab.testbed import Testbed


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if {"testbed", "etcd_cluster"} & set(getattr(item, "fixturenames", ())) and \
                not item.get_closest_marker("ovs"):
            item.add_marker(pytest.mark.ovs)
        if not item.get_closest_marker("ovs"):
            item.add_marker(pytest.mark.unit)


def require_lab() -> None:
    """Fail, never skip: a suite that quietly skips its real-OVS tests would
    pass without proving anything."""
    if os.geteuid() != 0:
        pytest.fail("the namespace testbed needs root (it creates network namespaces); "
                    "without root run `pytest -m unit`")
    for tool in ("ovs-vswitchd", "ovsdb-server", "ip", "dumpcap", "tshark", "ethtool"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run scripts/install.sh")


@pytest.fixture
def testbed(request) -> Iterator[Testbed]:
    """A fresh namespace testbed, torn down even when the test fails.
    Parametrized indirectly with "netdev" or "dpdk", it is the datapath of
    every hypervisor (docs/datapath.rst, "OVS-DPDK")."""
    require_lab()
    datapath = getattr(request, "param", "netdev")
    if datapath == "dpdk" and not os.access(OVS_VSWITCHD_DPDK, os.X_OK):
        pytest.fail(f"{OVS_VSWITCHD_DPDK} is not installed: run scripts/install.sh")
    tb = Testbed(datapath=datapath)
    try:
        yield tb
    finally:
        tb.close()


@pytest.fixture
def etcd_cluster() -> Iterator[EtcdCluster]:
    """Three real etcd members on 127.0.0.1 (lab/etcd.py), stopped by PID
    and removed even when the test fails."""
    if shutil.which("etcd") is None:
        pytest.fail("etcd is not installed: run scripts/install.sh (Debian package etcd-server)")
    cluster = EtcdCluster(3)
    try:
        yield cluster.start()
    finally:
        cluster.close()
