"""The inner IPv4/IPv6 and UDP headers of an Encapsulated Control Message
(RFC 9301 section 5.8, "IH" and the inner "UDP").

Deployed implementations send an inner UDP checksum of 0. That is legal for
IPv4 but not for IPv6 (RFC 8200 section 8.1), and tshark flags it, so we
compute a real checksum for both unless told to send a given value.

Decoding accepts one plain header: an IPv4 header without options and not
fragmented, or an IPv6 header whose next header is UDP. TOS/traffic class,
IPv4 identification and flags, and the IPv6 flow label are not kept (they are
written as zero); the hop limit and the UDP checksum as sent are.
"""
from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple, Union

from .addresses import LispDecodeError, Reader

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
UDP = 17
_IPV4_HEADER, _IPV6_HEADER, _UDP_HEADER = 20, 40, 8
# What decoding reads of each header: IPv4 version/IHL, total length,
# flags/fragment offset, TTL, protocol, addresses; IPv6 payload length,
# next header, hop limit, addresses; the UDP header whole.
_IPV4 = struct.Struct("!B1xH2xHBB2x4s4s")
_IPV6 = struct.Struct("!4xHBB16s16s")
_UDP = struct.Struct("!HHHH")


class InnerPacket(NamedTuple):
    """What the inner IP and UDP headers of an ECM say, and their payload.

    ``udp_checksum`` is ``None`` when the received checksum was correct, else
    the value that was on the wire (0 for "none", as deployed ITRs send).
    """

    source: IPAddress
    destination: IPAddress
    source_port: int
    destination_port: int
    hop_limit: int
    udp_checksum: int | None
    payload: bytes


def internet_checksum(data: bytes) -> int:
    """The 16-bit one's-complement sum of RFC 1071, complemented.

    Computed on the whole packet as one integer: 2**16 is 1 modulo 0xFFFF,
    so the one's-complement sum of the 16-bit words is the packet's value
    modulo 0xFFFF (written 0xFFFF, not 0, unless every word is zero). One
    C operation instead of unpacking the words: the Map-Resolver checks two
    checksums per request."""
    if len(data) % 2:
        data += b"\x00"
    value = int.from_bytes(data, "big")
    total = value % 0xFFFF or (0xFFFF if value else 0)
    return ~total & 0xFFFF


def udp_checksum(source: IPAddress, destination: IPAddress, udp_segment: bytes) -> int:
    """The UDP checksum over the pseudo-header (RFC 768; RFC 8200 section 8.1
    for IPv6) and ``udp_segment`` (header with checksum 0, then payload).
    A computed 0 is sent as 0xFFFF, since 0 means "no checksum"."""
    if source.version == 4:
        pseudo = source.packed + destination.packed + bytes((0, UDP)) + len(udp_segment).to_bytes(2, "big")
    else:
        pseudo = source.packed + destination.packed + len(udp_segment).to_bytes(4, "big") + bytes((0, 0, 0, UDP))
    return internet_checksum(pseudo + udp_segment) or 0xFFFF


def build_ip_udp(source: IPAddress, destination: IPAddress, source_port: int, destination_port: int,
                 payload: bytes, hop_limit: int = 128, checksum: int | None = None) -> bytes:
    """An IP header, a UDP header and ``payload``. ``checksum=None`` computes
    the UDP checksum; an int is written as given (0 = no checksum)."""
    if source.version != destination.version:
        raise ValueError("inner source and destination must be the same IP version")
    udp_length = _UDP_HEADER + len(payload)
    if udp_length > 0xFFFF - _IPV6_HEADER:
        raise ValueError("inner message too long for one IP packet")
    udp = source_port.to_bytes(2, "big") + destination_port.to_bytes(2, "big") + udp_length.to_bytes(2, "big")
    if checksum is None:
        checksum = udp_checksum(source, destination, udp + b"\x00\x00" + payload)
    udp += checksum.to_bytes(2, "big") + payload
    if source.version == 4:
        header = (bytes((0x45, 0)) + (_IPV4_HEADER + udp_length).to_bytes(2, "big") + bytes(4)
                  + bytes((hop_limit, UDP)) + b"\x00\x00" + source.packed + destination.packed)
        return header[:10] + internet_checksum(header).to_bytes(2, "big") + header[12:] + udp
    return (b"\x60\x00\x00\x00" + udp_length.to_bytes(2, "big") + bytes((UDP, hop_limit))
            + source.packed + destination.packed + udp)


def parse_ip_udp(reader: Reader) -> InnerPacket:
    """Read an inner IP + UDP packet; the UDP length bounds the payload and
    must agree with the IP length."""
    version = reader.data[reader.pos] >> 4 if reader.remaining else None
    if version == 4:
        header = reader.take(_IPV4_HEADER)
        first, total_length, fragment, hop_limit, protocol, source, destination = _IPV4.unpack(header)
        if first != 0x45:
            raise LispDecodeError("inner IPv4 header has options")
        if fragment & 0x3FFF:
            raise LispDecodeError("inner IPv4 packet is a fragment")
        if protocol != UDP:
            raise LispDecodeError(f"inner IPv4 protocol {protocol} is not UDP")
        if internet_checksum(header):
            raise LispDecodeError("inner IPv4 header checksum is wrong")
        ip_payload_length = total_length - _IPV4_HEADER
        source, destination = ipaddress.IPv4Address(source), ipaddress.IPv4Address(destination)
    elif version == 6:
        header = reader.take(_IPV6_HEADER)
        ip_payload_length, next_header, hop_limit, source, destination = _IPV6.unpack(header)
        if next_header != UDP:
            raise LispDecodeError(f"inner IPv6 next header {next_header} is not UDP")
        source, destination = ipaddress.IPv6Address(source), ipaddress.IPv6Address(destination)
    else:
        raise LispDecodeError(f"inner header is IP version {version}, not 4 or 6")
    udp = reader.take(_UDP_HEADER)
    source_port, destination_port, udp_length, wire_checksum = _UDP.unpack(udp)
    if udp_length != ip_payload_length or udp_length < _UDP_HEADER:
        raise LispDecodeError(f"inner UDP length {udp_length} disagrees with IP payload length {ip_payload_length}")
    payload = reader.take(udp_length - _UDP_HEADER)
    correct = udp_checksum(source, destination, udp[:6] + b"\x00\x00" + payload)
    return InnerPacket(source, destination, source_port, destination_port, hop_limit,
                       None if wire_checksum == correct else wire_checksum, payload)
