"""Tunnel profiles: how a bridge's tunnel port is made and what it delivers.

The controller never creates OVS ports; it only needs to know what a
decapsulated packet looks like in table 0. The testbed and the docs use the
same options so that what we test is what we tell users to type.
docs/datapath.rst says why `lisp` is compile-only here.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TunnelProfile:
    name: str
    port_type: str
    options: tuple[tuple[str, str], ...]
    decap_mac: str  # dl_dst of a decapsulated packet as table 0 sees it
    carries_traffic: bool  # False: the userspace datapath cannot encapsulate it

    def port_options(self, local_ip: str | None = None) -> dict[str, str]:
        """Interface options for `ovs-vsctl`; local_ip lets several bridges
        in one ovs-vswitchd hold flow-based tunnel ports."""
        opts = dict(self.options)
        if local_ip:
            opts["local_ip"] = local_ip
        return opts

    def vsctl_args(self, port: str, local_ip: str | None = None) -> list[str]:
        args = ["--", "set", "Interface", port, f"type={self.port_type}"]
        args += [f"options:{k}={v}" for k, v in self.port_options(local_ip).items()]
        return args


_FLOW_BASED = (("remote_ip", "flow"), ("key", "flow"))

PROFILES: dict[str, TunnelProfile] = {
    "lisp-gpe": TunnelProfile(
        "lisp-gpe", "vxlan",
        (("exts", "gpe"), ("packet_type", "legacy_l3"), ("dst_port", "4341"))
        + _FLOW_BASED,
        "00:00:00:00:00:00", True),
    "gre-l3": TunnelProfile(
        "gre-l3", "gre", (("packet_type", "legacy_l3"),) + _FLOW_BASED,
        "00:00:00:00:00:00", True),
    "lisp": TunnelProfile(
        "lisp", "lisp", _FLOW_BASED, "02:00:00:00:00:00", False),
}

DEFAULT_PROFILE = "lisp-gpe"
