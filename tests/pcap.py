"""A tiny classic-pcap reader and writer for UDP test traffic: Ethernet,
IPv4 or IPv6, UDP. Enough to read the LISP fixtures and to hand tshark
packets we built; not a general packet parser."""
from __future__ import annotations

import ipaddress
import struct
from pathlib import Path
from typing import NamedTuple

from lisp_controller.lisp.headers import internet_checksum, udp_checksum

LINKTYPE_ETHERNET = 1
_ETH_IPV4, _ETH_IPV6, _ETH_VLAN, _UDP = 0x0800, 0x86DD, 0x8100, 17


class UdpFrame(NamedTuple):
    number: int            # 1-based frame number in the file, as tshark counts
    source: ipaddress.IPv4Address | ipaddress.IPv6Address
    source_port: int
    destination: ipaddress.IPv4Address | ipaddress.IPv6Address
    destination_port: int
    payload: bytes


def read_frames(path: Path) -> list[bytes]:
    """The link-layer frames of a classic pcap file (either byte order)."""
    data = Path(path).read_bytes()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a classic pcap file")
    if struct.unpack(endian + "I", data[20:24])[0] != LINKTYPE_ETHERNET:
        raise ValueError(f"{path}: link type is not Ethernet")
    frames, offset = [], 24
    while offset < len(data):
        _sec, _frac, captured, _original = struct.unpack(endian + "IIII", data[offset:offset + 16])
        frames.append(data[offset + 16:offset + 16 + captured])
        offset += 16 + captured
    return frames


def udp_frames(path: Path, port: int = 4342) -> list[UdpFrame]:
    """The UDP datagrams to or from ``port`` (outer headers only)."""
    found = []
    for number, frame in enumerate(read_frames(path), 1):
        ethertype, offset = struct.unpack("!H", frame[12:14])[0], 14
        if ethertype == _ETH_VLAN:
            ethertype, offset = struct.unpack("!H", frame[16:18])[0], 18
        if ethertype == _ETH_IPV4:
            header_length, protocol = (frame[offset] & 0x0F) * 4, frame[offset + 9]
            source = ipaddress.IPv4Address(frame[offset + 12:offset + 16])
            destination = ipaddress.IPv4Address(frame[offset + 16:offset + 20])
            offset += header_length
        elif ethertype == _ETH_IPV6:
            protocol = frame[offset + 6]
            source = ipaddress.IPv6Address(frame[offset + 8:offset + 24])
            destination = ipaddress.IPv6Address(frame[offset + 24:offset + 40])
            offset += 40
        else:
            continue
        if protocol != _UDP:
            continue
        source_port, destination_port, length = struct.unpack("!HHH", frame[offset:offset + 6])
        if port in (source_port, destination_port):
            found.append(UdpFrame(number, source, source_port, destination, destination_port,
                                  frame[offset + 8:offset + length]))
    return found


def ethernet_ipv4_udp(source: str, destination: str, source_port: int, destination_port: int,
                      payload: bytes) -> bytes:
    """One Ethernet frame carrying ``payload`` in IPv4/UDP, checksums correct."""
    src, dst = ipaddress.IPv4Address(source), ipaddress.IPv4Address(destination)
    udp = struct.pack("!HHHH", source_port, destination_port, 8 + len(payload), 0) + payload
    udp = udp[:6] + struct.pack("!H", udp_checksum(src, dst, udp)) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, _UDP, 0, src.packed, dst.packed)
    ip = ip[:10] + struct.pack("!H", internet_checksum(ip)) + ip[12:]
    return b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + struct.pack("!H", _ETH_IPV4) + ip + udp


def write_pcap(path: Path, frames: list[bytes]) -> None:
    """A classic little-endian pcap of Ethernet ``frames``, one second apart."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET)]
    for second, frame in enumerate(frames):
        out.append(struct.pack("<IIII", second, 0, len(frame), len(frame)) + frame)
    Path(path).write_bytes(b"".join(out))
