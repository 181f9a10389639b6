"""Path MTU discovery, the pure parts (docs/mtu.rst): the MTU arithmetic,
the flows that send a too-big packet to the controller, and the answers
the controller builds, each answer decoded by tshark as an independent
reader (checksums verified, the quoted packet dissected)."""
from __future__ import annotations

import ipaddress
import os
import struct
import subprocess
from pathlib import Path

import pytest

from lisp_controller.config import ConfigError, parse_config
from lisp_controller.controller.reconcile import meter_plan
from lisp_controller.lisp.headers import internet_checksum
from lisp_controller.pipeline import pathmtu
from lisp_controller.pipeline.compiler import (METER_MISS, METER_TOO_BIG, MISS_BURST, MISS_PPS, TOO_BIG_BURST,
                                               TOO_BIG_PPS, compile_bridge, compile_meters, compile_overlay)
from lisp_controller.pipeline.flows import Meter
from lisp_controller.pipeline.profiles import tunnel_mtu

from .fakeof import trace
from .pcap import write_pcap

VM_MAC, ROUTER_MAC = "52:54:00:b8:27:75", "02:4c:00:00:00:01"
VNET0, LISP0 = 1, 2


def overlay(**bridge_keys):
    endpoint = {"port": "vnet0", "mac": VM_MAC, "eids": ["10.1.1.20", "fd00:1::20"]}
    if "gateway" in bridge_keys:
        endpoint["gateway"] = bridge_keys.pop("gateway")
    return parse_config({
        "bridge": [{"name": "br2", "rloc": "192.168.1.249", "iid": 1000, "router_mac": ROUTER_MAC,
                    "endpoint": [endpoint], **bridge_keys}],
        "mapping": [{"iid": 1000, "eid": "10.1.1.30", "rlocs": ["192.168.1.252"]},
                    {"iid": 1000, "eid": "10.1.1.40", "rlocs": ["2001:db8::252"]},
                    {"iid": 1000, "eid": "fd00:1::30", "rlocs": ["192.168.1.252"]}]}).overlay


def bridge(**keys):
    return overlay(**keys).bridges[0]


PORTS = {"vnet0": VNET0, "lisp0": LISP0}


# -- the arithmetic and the flows ------------------------------------------

@pytest.mark.parametrize("underlay,profile,version,mtu", [
    (1500, "lisp-gpe", 4, 1464), (1500, "lisp-gpe", 6, 1444), (1500, "gre-l3", 4, 1472),
    (1500, "gre-l3", 6, 1452), (9000, "lisp-gpe", 4, 8964), (1500, "lisp", 4, 1464)])
def test_tunnel_mtu_is_the_underlay_minus_outer_ip_and_encapsulation(underlay, profile, version, mtu):
    assert tunnel_mtu(underlay, profile, version) == mtu


def frame(size: int, dst: str = "10.1.1.30") -> dict:
    return {"in_port": VNET0, "eth_type": 0x0800, "vlan_vid": 0, "ipv4_dst": dst, "frame_len": size}


@pytest.mark.parametrize("underlay", [1500, 1400, 9000])
def test_a_packet_one_byte_over_the_tunnel_mtu_goes_to_the_controller_through_the_meter(underlay):
    ov = overlay(underlay_mtu=underlay)
    flows = compile_bridge(ov.bridges[0], PORTS, compile_overlay(ov)).flows
    for dst, version in (("10.1.1.30", 4), ("10.1.1.40", 6)):
        fits = tunnel_mtu(underlay, "lisp-gpe", version) + 14  # + the Ethernet header
        ok = trace(flows, frame(fits, dst))
        assert ok.outputs == [LISP0] and "meter" not in ok.packet, (dst, ok)
        big = trace(flows, frame(fits + 1, dst))
        assert big.outputs == ["CONTROLLER"] and big.packet["meter"] == METER_TOO_BIG, (dst, big)
    # Local delivery never crosses the tunnel: no limit.
    assert trace(flows, {**frame(9000, "10.1.1.20")}).outputs == [VNET0]


def test_the_meter_is_per_bridge_and_reconciled_like_flows():
    meters = compile_meters(bridge())
    assert meters[METER_TOO_BIG] == Meter(METER_TOO_BIG, TOO_BIG_PPS, TOO_BIG_BURST)
    assert meters[METER_MISS] == Meter(METER_MISS, MISS_PPS, MISS_BURST)  # the map-cache misses' (xTR)
    assert len(meters) == 2
    mine, miss = meters[METER_TOO_BIG], meters[METER_MISS]
    assert meter_plan({}, meters) == [("add", mine), ("add", miss)]
    assert meter_plan({METER_TOO_BIG: mine, METER_MISS: miss, 7: None}, meters) == []  # right; 7 is not ours
    assert meter_plan({METER_TOO_BIG: mine._replace(rate=5), METER_MISS: miss}, meters) == [("modify", mine)]
    assert meter_plan({METER_TOO_BIG: None, METER_MISS: miss}, meters) == [("modify", mine)]  # a shape we never make


@pytest.mark.parametrize("raw,problem", [
    ({"underlay_mtu": 1279}, "between 1280 and 65535"), ({"underlay_mtu": "1500"}, "must be an integer"),
    ({"underlay_mtu": True}, "must be an integer"), ({"too_big_without_df": "frag"}, "drop, fragment")])
def test_bad_mtu_settings_are_named(raw, problem):
    with pytest.raises(ConfigError) as err:
        parse_config({"bridge": [{"name": "b", "rloc": "192.0.2.1", **raw}]})
    assert f"bridge[0].{next(iter(raw))}" in str(err.value) and problem in str(err.value)


def test_defaults_are_an_ethernet_underlay_and_drop():
    b = bridge()
    assert (b.underlay_mtu, b.too_big_without_df) == (1500, "drop")


# -- the answers, read by tshark ---------------------------------------------

def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def ipv4_packet(size: int, df: bool = True, proto: int = 6, src: str = "10.1.1.20", dst: str = "10.1.1.30",
                payload: bytes | None = None, options: bytes = b"", frag: int = 0) -> bytes:
    ihl = 20 + len(options)
    if payload is None:
        if proto == 6:  # a TCP segment from port 40000 to 8000
            payload = struct.pack("!HHIIBBHHH", 40000, 8000, 1, 0, 0x50, 0x18, 64240, 0, 0)
        elif proto == 17:
            payload = struct.pack("!HHHH", 40000, 9000, size - ihl, 0)
        else:
            payload = b""
        payload += bytes(range(256)) * ((size - ihl - len(payload)) // 256 + 1)
        payload = payload[:size - ihl]
    flags = (0x4000 if df else 0) | frag
    head = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl // 4, 0, ihl + len(payload), 0x1234, flags, 64, proto, 0,
                       ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed) + options
    head = head[:10] + struct.pack("!H", internet_checksum(head)) + head[12:]
    return head + payload


def ipv6_packet(size: int, next_header: int = 6, first: bytes | None = None) -> bytes:
    payload = (first or struct.pack("!HHIIBBHHH", 40000, 8000, 1, 0, 0x50, 0x18, 64240, 0, 0))
    payload = (payload + bytes(size))[:size - 40]
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, 64,
                       ipaddress.ip_address("fd00:1::20").packed, ipaddress.ip_address("fd00:1::30").packed) + payload


def eth(packet: bytes, version: int = 4) -> bytes:
    return mac(ROUTER_MAC) + mac(VM_MAC) + struct.pack("!H", 0x0800 if version == 4 else 0x86DD) + packet


def pin(frame: bytes, rloc: str = "192.168.1.252") -> pathmtu.PacketIn:
    return pathmtu.PacketIn(frame, VNET0, 1000, ipaddress.ip_address(rloc))


# tshark reads our answers as an independent decoder: a tool of the lab
# (scripts/install.sh), so these run with the ovs tests.
TSHARK = pytest.mark.ovs


def tshark(tmp_path: Path, frames: list[bytes], fields: list[str], *options: str) -> list[list[str]]:
    """Each frame decoded by tshark: one row per packet, one list per field
    (fields that occur twice, in the quoted packet, give two values)."""
    path = tmp_path / f"f{len(list(tmp_path.iterdir()))}.pcap"
    write_pcap(path, frames)
    cmd = ["tshark", "-r", str(path), "-o", "ip.check_checksum:TRUE", "-T", "fields", "-E", "occurrence=a",
           "-E", "aggregator=;", *options]
    for name in fields:
        cmd += ["-e", name]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [[col for col in line.split("\t")] for line in out.splitlines()]


@TSHARK
def test_ipv4_with_df_gets_fragmentation_needed_with_the_tunnel_mtu(tmp_path):
    big = ipv4_packet(1500)
    reply = pathmtu.handle(bridge(), PORTS, pin(eth(big)))
    assert (reply.action, reply.family, reply.mtu) == ("icmp", 4, 1464)
    (actions, answer), = reply.packet_outs
    assert actions == (("output", VNET0),)  # back out of the sender's port
    assert len(answer) - 14 <= 576  # RFC 1812's limit for an ICMP error
    row, = tshark(tmp_path, [answer], ["eth.src", "eth.dst", "ip.src", "ip.dst", "ip.checksum.status",
                                       "icmp.type", "icmp.code", "icmp.mtu", "icmp.checksum.status",
                                       "tcp.srcport", "tcp.dstport"])
    assert row == [ROUTER_MAC, VM_MAC,
                   "10.1.1.30;10.1.1.20", "10.1.1.20;10.1.1.30",  # answer, then the quoted packet
                   "1;1", "3", "4", "1464", "1", "40000", "8000"]


@TSHARK
def test_a_vm_with_a_gateway_hears_from_its_gateway_and_an_ipv6_rloc_gives_a_smaller_mtu(tmp_path):
    reply = pathmtu.handle(bridge(gateway="10.1.1.1", tunnel_profile="gre-l3"), PORTS,
                           pin(eth(ipv4_packet(1500)), "2001:db8::252"))
    assert reply.mtu == 1452  # 1500 - 40 (IPv6) - 8 (GRE with key)
    (_, answer), = reply.packet_outs
    row, = tshark(tmp_path, [answer], ["ip.src", "icmp.mtu"])
    assert row == ["10.1.1.1;10.1.1.20", "1452"]


@TSHARK
def test_ipv6_gets_packet_too_big_from_the_routers_link_local_address(tmp_path):
    reply = pathmtu.handle(bridge(), PORTS, pin(eth(ipv6_packet(1500), 6)))
    assert (reply.action, reply.family, reply.mtu) == ("icmp", 6, 1464)
    (actions, answer), = reply.packet_outs
    assert actions == (("output", VNET0),) and len(answer) - 14 <= 1280
    row, = tshark(tmp_path, [answer], ["eth.src", "eth.dst", "ipv6.src", "ipv6.dst", "icmpv6.type",
                                       "icmpv6.code", "icmpv6.mtu", "icmpv6.checksum.status", "tcp.srcport"])
    # fe80:: + the router MAC as modified EUI-64 (RFC 4291): 02:4c:00 -> 004c:00ff:fe..
    assert row == [ROUTER_MAC, VM_MAC, "fe80::4c:ff:fe00:1;fd00:1::20", "fd00:1::20;fd00:1::30",
                   "2", "0", "1464", "1", "40000"]


def test_icmp_errors_and_later_fragments_are_never_answered():
    b = bridge()
    icmp_error = ipv4_packet(1500, proto=1, payload=bytes([3, 1]) + bytes(1478))
    assert pathmtu.handle(b, PORTS, pin(eth(icmp_error))).action == "ignored"
    echo = ipv4_packet(1500, proto=1, payload=bytes([8, 0]) + bytes(1478))
    assert pathmtu.handle(b, PORTS, pin(eth(echo))).action == "icmp"  # a big ping is answered
    later = ipv4_packet(1500, frag=100)
    assert pathmtu.handle(b, PORTS, pin(eth(later))).action == "ignored"
    v6_error = ipv6_packet(1500, next_header=58, first=bytes([1, 0]))
    assert pathmtu.handle(b, PORTS, pin(eth(v6_error, 6))).action == "ignored"
    v6_echo = ipv6_packet(1500, next_header=58, first=bytes([128, 0]))
    assert pathmtu.handle(b, PORTS, pin(eth(v6_echo, 6))).action == "icmp"


def test_ipv4_without_df_is_dropped_by_default():
    reply = pathmtu.handle(bridge(), PORTS, pin(eth(ipv4_packet(1500, df=False))))
    assert (reply.action, reply.packet_outs) == ("dropped", ())


@TSHARK
def test_ipv4_without_df_is_fragmented_into_the_tunnel_when_asked(tmp_path):
    datagram = ipv4_packet(4000, df=False, proto=17)
    reply = pathmtu.handle(bridge(too_big_without_df="fragment"), PORTS, pin(eth(datagram)))
    assert reply.action == "fragmented" and len(reply.packet_outs) == 3
    for actions, _ in reply.packet_outs:  # where the map-cache sent the packet
        assert actions == (("set_field", "tun_ipv4_dst", ipaddress.ip_address("192.168.1.252")),
                           ("set_field", "tunnel_id", 1000), ("output", LISP0))
    frames = [f for _, f in reply.packet_outs]
    assert all(len(f) - 14 <= 1464 for f in frames)
    rows = tshark(tmp_path, frames, ["ip.len", "ip.flags.mf", "ip.frag_offset", "ip.checksum.status",
                                     "udp.length", "ip.reassembled.length"], "-o", "ip.defragment:TRUE")
    # Offsets in 8-byte units: 1440 data bytes per full fragment.
    assert [r[:4] for r in rows] == [["1460", "1", "0", "1"], ["1460", "1", "180", "1"],
                                     ["1120", "0", "360", "1"]]
    assert rows[-1][4:] == ["3980", "3980"]  # tshark put the UDP datagram back together, whole
    data = b"".join(f[14 + 20:] for f in frames)
    assert data == datagram[20:]


def test_only_options_with_the_copy_flag_are_repeated_in_later_fragments():
    router_alert = bytes([0x94, 4, 0, 0])  # copied
    record_route = bytes([0x07, 7, 4]) + bytes(4) + b"\0"  # not copied; padded to 8
    packet = ipv4_packet(3000, df=False, proto=17, options=router_alert + record_route)
    first, second, *_ = pathmtu.fragment_ipv4(packet, 1464)
    assert first[0] & 0x0F == 8 and first[20:32] == router_alert + record_route
    assert second[0] & 0x0F == 6 and second[20:24] == router_alert
    assert sum(len(f) - (f[0] & 0x0F) * 4 for f in pathmtu.fragment_ipv4(packet, 1464)) == 3000 - 32


def test_any_bytes_give_an_answer_or_nothing_never_an_exception():
    b = bridge(too_big_without_df="fragment")
    rng = __import__("random").Random(7)
    samples = [b"", b"\x00" * 13, eth(b""), eth(b"\x45"), eth(ipv4_packet(1500)[:30]), eth(b"\x60" + bytes(10), 6)]
    samples += [os.urandom(rng.randrange(0, 1600)) for _ in range(300)]
    samples += [eth(bytes([0x40 | rng.randrange(16)]) + os.urandom(rng.randrange(0, 1600))) for _ in range(300)]
    for sample in samples:
        reply = pathmtu.handle(b, PORTS, pin(sample))
        assert reply.action in ("icmp", "fragmented", "dropped", "ignored")
