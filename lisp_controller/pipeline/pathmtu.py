"""Path MTU discovery across the overlay: what the controller does with a
packet too big for the tunnel (docs/mtu.rst). Pure: frames in, frames out.

The flows send such a packet to the controller (through a meter) instead of
letting Open vSwitch drop it silently. The controller then answers the
sender the way a router on the path would: ICMP "fragmentation needed"
(RFC 792, RFC 1191) for IPv4 with DF set, ICMPv6 "packet too big"
(RFC 4443, RFC 8201) for IPv6, each carrying the tunnel's MTU, so the
sender's TCP lowers its segment size and the transfer goes on. An IPv4
packet without DF may be fragmented by routers: the bridge's
`too_big_without_df` says whether the controller fragments it into the
tunnel or drops it (Open vSwitch has no fragmentation action).
"""
from __future__ import annotations

import ipaddress
import struct
from typing import Mapping, NamedTuple

from lisp_controller.lisp.headers import internet_checksum as checksum
from lisp_controller.model import Bridge
from lisp_controller.pipeline.actions import output, set_field
from lisp_controller.pipeline.flows import ETH_IP, ETH_IPV6, IPPROTO_ICMPV6
from lisp_controller.pipeline.profiles import tunnel_mtu

_ETH = struct.Struct("!6s6sH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
ETH_HEADER = _ETH.size
IPPROTO_ICMP = 1
IP_DF, IP_MF, IP_OFFSET = 0x4000, 0x2000, 0x1FFF
ICMP_UNREACHABLE, ICMP_FRAG_NEEDED = 3, 4
ICMPV6_PACKET_TOO_BIG = 2
# ICMP errors are never answered with ICMP errors (RFC 1122 3.2.2, RFC 4443 2.4(e)).
ICMP_ERRORS = frozenset({3, 4, 5, 11, 12})
ICMPV6_INFORMATIONAL = 128  # types below are errors
IPV4_ERROR_SIZE = 576  # RFC 1812 4.3.2.3: an ICMP error is at most 576 bytes
IPV6_MIN_MTU = 1280  # RFC 4443 2.4(c): as much of the packet as fits in it
TTL = 64


class PacketIn(NamedTuple):
    """A too-big packet as the switch sent it: the frame, where it came
    from, and the tunnel destination and key the map-cache gave it."""

    frame: bytes
    in_port: int
    tunnel_id: int
    tun_dst: ipaddress.IPv4Address | ipaddress.IPv6Address | None


class Reply(NamedTuple):
    """What to do: `action` is "icmp" (answer sent back to the VM),
    "fragmented" (fragments sent into the tunnel), "dropped" (IPv4
    without DF, policy drop) or "ignored" (nothing to answer: not IP, an
    ICMP error, a later fragment, malformed). `packet_outs` are (actions,
    frame) pairs to send."""

    action: str
    family: int  # 4, 6, or 0 when not IP
    mtu: int
    packet_outs: tuple[tuple[tuple, bytes], ...] = ()


def handle(bridge: Bridge, ports: Mapping[str, int], pin: PacketIn) -> Reply:
    """The answer to one too-big packet on `bridge`, whose ports are
    `ports` (name -> number)."""
    rloc_version = 6 if pin.tun_dst is not None and pin.tun_dst.version == 6 else 4
    mtu = tunnel_mtu(bridge.underlay_mtu, bridge.profile, rloc_version)
    frame = pin.frame
    if len(frame) < ETH_HEADER:
        return Reply("ignored", 0, mtu)
    _, sender_mac, eth_type = _ETH.unpack_from(frame)
    packet = frame[ETH_HEADER:]
    back = (output(pin.in_port),)  # from the router, to the sender, on its port

    def to_sender(ip_type: int, answer: bytes) -> tuple[tuple, bytes]:
        return back, _ETH.pack(sender_mac, _mac_bytes(bridge.router_mac), ip_type) + answer

    if eth_type == ETH_IPV6:
        answer = packet_too_big(packet, mtu, router_link_local(bridge.router_mac))
        if answer is None:
            return Reply("ignored", 6, mtu)
        return Reply("icmp", 6, mtu, (to_sender(ETH_IPV6, answer),))
    if eth_type != ETH_IP or not _valid_ipv4(packet):
        return Reply("ignored", 0, mtu)
    if not struct.unpack_from("!H", packet, 6)[0] & IP_DF:
        tunnel = ports.get(bridge.tunnel_port)
        if bridge.too_big_without_df != "fragment" or tunnel is None or pin.tun_dst is None:
            return Reply("dropped", 4, mtu)
        into_tunnel = (set_field("tun_ipv6_dst" if rloc_version == 6 else "tun_ipv4_dst", pin.tun_dst),
                       set_field("tunnel_id", pin.tunnel_id), output(tunnel))
        head = frame[:ETH_HEADER]
        return Reply("fragmented", 4, mtu,
                     tuple((into_tunnel, head + part) for part in fragment_ipv4(packet, mtu)))
    source = _router_ipv4(bridge, ports, pin.in_port) or packet[16:20]
    answer = fragmentation_needed(packet, mtu, source)
    if answer is None:
        return Reply("ignored", 4, mtu)
    return Reply("icmp", 4, mtu, (to_sender(ETH_IP, answer),))


def _router_ipv4(bridge: Bridge, ports: Mapping[str, int], in_port: int) -> bytes | None:
    """The sender's default router, if the bridge is it (an endpoint's
    gateway, scenario 3): the address a router on the path answers from."""
    for ep in bridge.endpoints:
        if ports.get(ep.port) == in_port and ep.gateway is not None:
            return ep.gateway.packed
    return None


def router_link_local(mac: str) -> bytes:
    """fe80::/64 with the modified EUI-64 of the router MAC (RFC 4291
    appendix A): the bridge's IPv6 router address on every VM's link."""
    b = _mac_bytes(mac)
    return bytes.fromhex("fe80000000000000") + bytes([b[0] ^ 0x02]) + b[1:3] + b"\xff\xfe" + b[3:]


def fragmentation_needed(packet: bytes, mtu: int, source: bytes) -> bytes | None:
    """The IPv4 packet (header and ICMP) a router sends back for `packet`,
    which has DF set and does not fit `mtu`: type 3 code 4 with the
    next-hop MTU (RFC 1191), quoting as much of `packet` as fits in 576
    bytes. None for what must not be answered: an ICMP error, a fragment
    other than the first."""
    ihl = (packet[0] & 0x0F) * 4
    flags = struct.unpack_from("!H", packet, 6)[0]
    if flags & IP_OFFSET or (packet[9] == IPPROTO_ICMP and len(packet) > ihl and packet[ihl] in ICMP_ERRORS):
        return None
    quoted = packet[:IPV4_ERROR_SIZE - 20 - 8]
    icmp = struct.pack("!BBHHH", ICMP_UNREACHABLE, ICMP_FRAG_NEEDED, 0, 0, mtu) + quoted
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    return _ipv4_header(20 + len(icmp), 0, 0, IPPROTO_ICMP, source, packet[12:16]) + icmp


def packet_too_big(packet: bytes, mtu: int, source: bytes) -> bytes | None:
    """The ICMPv6 "packet too big" (header and message) for `packet`,
    quoting as much of it as fits in IPv6's minimum MTU. None for an
    ICMPv6 error, which is never answered, or a malformed packet."""
    if len(packet) < _IPV6.size or packet[0] >> 4 != 6:
        return None
    if packet[6] == IPPROTO_ICMPV6 and len(packet) > 40 and packet[40] < ICMPV6_INFORMATIONAL:
        return None
    destination = packet[8:24]
    quoted = packet[:IPV6_MIN_MTU - 40 - 8]
    icmp = struct.pack("!BBHI", ICMPV6_PACKET_TOO_BIG, 0, 0, mtu) + quoted
    pseudo = source + destination + struct.pack("!I3xB", len(icmp), IPPROTO_ICMPV6)
    icmp = icmp[:2] + struct.pack("!H", checksum(pseudo + icmp)) + icmp[4:]
    return _IPV6.pack(6 << 28, len(icmp), IPPROTO_ICMPV6, TTL, source, destination) + icmp


def fragment_ipv4(packet: bytes, mtu: int) -> list[bytes]:
    """`packet` (IPv4, DF clear) cut into fragments of at most `mtu`
    bytes (RFC 791 3.2): data in multiples of 8 bytes, MF on all but the
    last (and on the last too if `packet` was itself a non-last
    fragment); options without the copy flag only in the first."""
    ihl = (packet[0] & 0x0F) * 4
    total = struct.unpack_from("!H", packet, 2)[0]
    flags = struct.unpack_from("!H", packet, 6)[0]
    options, data = packet[20:ihl], packet[ihl:total]
    later_options = _copied_options(options)
    out, offset = [], 0
    while offset < len(data):
        opts = options if offset == 0 else later_options
        room = max(8, (mtu - 20 - len(opts)) // 8 * 8)
        chunk = data[offset:offset + room]
        last = offset + len(chunk) >= len(data)
        more = IP_MF if not last or flags & IP_MF else 0
        frag = more | ((flags & IP_OFFSET) + offset // 8)
        header = bytearray(packet[:20])
        header[0] = 0x40 | (20 + len(opts)) // 4
        struct.pack_into("!HHH", header, 2, 20 + len(opts) + len(chunk),
                         struct.unpack_from("!H", packet, 4)[0], frag)
        struct.pack_into("!H", header, 10, 0)
        head = bytes(header) + opts
        out.append(head[:10] + struct.pack("!H", checksum(head)) + head[12:] + chunk)
        offset += len(chunk)
    return out


def _copied_options(options: bytes) -> bytes:
    """The IPv4 options every fragment carries (copy flag set), padded to
    a multiple of 4 bytes."""
    out, i = b"", 0
    while i < len(options):
        kind = options[i]
        if kind == 0:  # end of options
            break
        if kind == 1:  # no-op
            i += 1
            continue
        length = options[i + 1] if i + 1 < len(options) else 0
        if length < 2:
            break
        if kind & 0x80:
            out += options[i:i + length]
        i += length
    return out + b"\0" * (-len(out) % 4)


def _valid_ipv4(packet: bytes) -> bool:
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return False
    ihl = (packet[0] & 0x0F) * 4
    total = struct.unpack_from("!H", packet, 2)[0]
    return 20 <= ihl <= total <= len(packet)


def _ipv4_header(length: int, ident: int, flags: int, proto: int, src: bytes, dst: bytes) -> bytes:
    header = _IPV4.pack(0x45, 0xC0, length, ident, flags, TTL, proto, 0, src, dst)
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:]



def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))
