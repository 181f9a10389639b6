"""Shared fixtures. Only the namespace testbed lives here."""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from lab.testbed import Testbed


@pytest.fixture
def testbed() -> Iterator[Testbed]:
    """A fresh namespace testbed, torn down even when the test fails."""
    # Fail, never skip: a suite that quietly skips its real-OVS tests would
    # pass without proving anything.
    if os.geteuid() != 0:
        pytest.fail("the namespace testbed needs root (it creates network namespaces)")
    for tool in ("ovs-vswitchd", "ovsdb-server", "ip", "dumpcap", "tshark", "ethtool"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run scripts/install.sh")
    tb = Testbed()
    try:
        yield tb
    finally:
        tb.close()
