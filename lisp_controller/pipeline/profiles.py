"""Tunnel profiles: how a bridge's tunnel port is made and what it delivers.

The controller never creates OVS ports; it only needs to know what a
decapsulated packet looks like in table 0. The testbed and the docs use the
same options so that what we test is what we tell users to type.
docs/datapath.rst says why `lisp` is compile-only here; docs/mtu.rst
explains the MTU arithmetic (`tunnel_mtu`).
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
    # Bytes the encapsulation adds after the outer IP header (UDP and the
    # LISP/VXLAN-GPE header, or GRE with its key). The inner packet
    # travels without its Ethernet header (packet_type=legacy_l3).
    header_bytes: int

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
UDP_HEADER, LISP_HEADER, GRE_WITH_KEY = 8, 8, 8  # RFC 768, RFC 9300 / RFC 9305, RFC 2890
OUTER_IP_HEADER = {4: 20, 6: 40}  # no options, no extension headers

PROFILES: dict[str, TunnelProfile] = {
    "lisp-gpe": TunnelProfile(
        "lisp-gpe", "vxlan",
        (("exts", "gpe"), ("packet_type", "legacy_l3"), ("dst_port", "4341"))
        + _FLOW_BASED,
        "00:00:00:00:00:00", True, UDP_HEADER + LISP_HEADER),
    "gre-l3": TunnelProfile(
        "gre-l3", "gre", (("packet_type", "legacy_l3"),) + _FLOW_BASED,
        "00:00:00:00:00:00", True, GRE_WITH_KEY),
    "lisp": TunnelProfile(
        "lisp", "lisp", _FLOW_BASED, "02:00:00:00:00:00", False, UDP_HEADER + LISP_HEADER),
}

DEFAULT_PROFILE = "lisp-gpe"
DEFAULT_UNDERLAY_MTU = 1500  # what an Ethernet underlay carries unless told otherwise


def tunnel_mtu(underlay_mtu: int, profile: str, rloc_version: int) -> int:
    """The largest inner IP packet the tunnel carries without the outer
    packet exceeding the underlay's MTU: 1500 - 20 - 8 - 8 = 1464 for
    lisp-gpe over IPv4 RLOCs, 1444 over IPv6 (docs/mtu.rst)."""
    return underlay_mtu - OUTER_IP_HEADER[rloc_version] - PROFILES[profile].header_bytes
