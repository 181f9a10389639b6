"""What an Encapsulated Map-Request asks, as the Map-Resolver needs it, read
either from the codec's decoded value or, for the shape almost every ITR
sends, straight off the wire (docs/control-plane.rst, "Performance").

A Map-Resolver needs four things from an ECM Map-Request: the nonce to echo,
the ITR-RLOCs to answer to, the inner UDP source port to answer from, and
the EIDs asked for. ``Query`` holds just those. ``Query.of`` takes them from
a value ``messages.decode`` made; ``recognise`` reads them from the bytes
with a few precompiled ``struct`` reads when the datagram has the common
shape:

* an ECM header (any flags), then an inner IPv4 header without options, not
  a fragment, protocol UDP, with a correct header checksum, or an inner IPv6
  header whose next header is UDP; the IP and UDP lengths agreeing with each
  other and with the datagram's end (no trailer);
* a Map-Request (any flags but M: no Map-Reply record) with one EID record,
  a Source EID that is absent, an IPv4/IPv6 address or one inside an
  Instance-ID LCAF, and ITR-RLOCs that are IPv4/IPv6 addresses;
* the EID record's EID an IPv4/IPv6 address, bare or inside an Instance-ID
  LCAF, and nothing after it.

Anything else (and anything short) makes ``recognise`` return ``None``
without raising, and the caller decodes with the codec, which accepts or
refuses it with its usual errors. This is a pre-check of the codec, not a
second codec: for every datagram it accepts, the codec decodes the same
datagram to a value whose ``Query.of`` is equal (tests/test_common_request.py
holds this for fixtures, random requests and mutated bytes), and the
Map-Resolver answers both the same, byte for byte. What the Map-Resolver
does not read (the inner checksums' correctness, TTLs, flags, the Source
EID's value, the record's mask-len) is checked only as far as the codec
would refuse it.
"""
from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple, Union

from .addresses import AFI_IPV4, AFI_IPV6, AFI_LCAF, AFI_NONE, LCAF_INSTANCE_ID, InstanceIdAddress
from .headers import UDP, internet_checksum
from .messages import ECM, MAP_REQUEST, EncapsulatedControlMessage, MapRequest, decode

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
# (IID, address, whether the request wrote it in an Instance-ID LCAF): the
# reply writes its EID the same way.
AskedEid = tuple[int, IPAddress, bool]

_ECM_HEADER = 4
_IPV4_AT, _IPV6_AT = _ECM_HEADER, _ECM_HEADER
# The inner headers and the Map-Request's first words in one read each:
# IPv4 version/IHL, total length, flags/fragment, protocol (then its 20
# bytes are checksummed), or IPv6 payload length and next header; then UDP
# source port and length; then the Map-Request's word 0 and nonce.
_IPV4_UDP_REQUEST = struct.Struct("!B1xH2xHxB10xHxxH2xI8s")
_IPV6_UDP_REQUEST = struct.Struct("!4xHBx32xHxxH2xI8s")
_AFI = struct.Struct("!H")
_LCAF = struct.Struct("!H2xBxHI")            # AFI 16387, type, length, IID (the Instance-ID LCAF's body)
_ADDRESS_SIZE = {AFI_IPV4: 4, AFI_IPV6: 16}
_ADDRESS_TYPE = {AFI_IPV4: ipaddress.IPv4Address, AFI_IPV6: ipaddress.IPv6Address}
_MAP_DATA_PRESENT = MapRequest._MAP_DATA_PRESENT


class Query(NamedTuple):
    """An Encapsulated Map-Request as the Map-Resolver reads it.

    ``eids`` are the records' EIDs that can be looked up (IPv4/IPv6, bare
    or in an Instance-ID LCAF), in order; ``ecm`` is the request itself,
    decoded or as received, for forwarding it to an ETR."""

    nonce: bytes
    itr_rlocs: tuple
    reply_port: int
    eids: tuple[AskedEid, ...]
    ecm: Union[EncapsulatedControlMessage, bytes]

    @classmethod
    def of(cls, ecm: EncapsulatedControlMessage) -> Query | None:
        """The query of a decoded ECM; ``None`` if it carries no Map-Request."""
        request = ecm.message
        if type(request) is not MapRequest:
            return None
        eids = []
        for record in request.records:
            found = ip_eid(record.eid)
            if found is not None:
                eids.append((*found, type(record.eid) is InstanceIdAddress))
        return cls(request.nonce, request.itr_rlocs, ecm.inner_source_port, tuple(eids), ecm)

    def decoded_ecm(self) -> EncapsulatedControlMessage:
        """The ECM as the codec decodes it (for a query ``recognise`` read,
        decoding the bytes it read, which the codec always accepts)."""
        return self.ecm if isinstance(self.ecm, EncapsulatedControlMessage) else decode(self.ecm)


def ip_eid(address: object) -> tuple[int, IPAddress] | None:
    """(IID, address) of an EID that is an IPv4/IPv6 address, bare (IID 0)
    or inside an Instance-ID LCAF; ``None`` for any other address."""
    if type(address) is InstanceIdAddress:
        inner = address.address
        if isinstance(inner, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            return address.instance_id, inner
        return None
    if isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return 0, address
    return None


def decode_request(data: bytes):
    """``recognise(data)``, or the codec's value (or ``LispDecodeError``)
    for a datagram of another shape: how the Map-Resolver's listener
    decodes."""
    return recognise(data) or decode(data)


def recognise(data: bytes) -> Query | None:
    """The query of an ECM Map-Request of the common shape (the module's
    docstring), or ``None``. Never raises: a read past the end (a short
    ``struct`` read or address) declines like any other surprise."""
    try:
        return _read(data)
    except (struct.error, ValueError, IndexError):
        return None


def _read(data: bytes) -> Query | None:
    end = len(data)
    if data[0] >> 4 != ECM:
        return None
    version = data[_ECM_HEADER] >> 4
    if version == 4:
        first, total_length, fragment, protocol, reply_port, udp_length, word, nonce = \
            _IPV4_UDP_REQUEST.unpack_from(data, _IPV4_AT)
        if first != 0x45 or fragment & 0x3FFF or protocol != UDP or total_length != end - _ECM_HEADER \
                or internet_checksum(data[_IPV4_AT:_IPV4_AT + 20]):
            return None
        udp_at = _IPV4_AT + 20
    elif version == 6:
        payload_length, next_header, reply_port, udp_length, word, nonce = _IPV6_UDP_REQUEST.unpack_from(data, _IPV6_AT)
        udp_at = _IPV6_AT + 40
        if next_header != UDP or payload_length != end - udp_at:
            return None
    else:
        return None
    if udp_length != end - udp_at or udp_length < 8:
        return None
    if word >> 28 != MAP_REQUEST or word & 0xFF != 1 or word & _MAP_DATA_PRESENT:
        return None
    at = udp_at + 20
    # The Source EID: read past, as the codec would accept it.
    afi, = _AFI.unpack_from(data, at)
    if afi == AFI_NONE:
        at += 2
    elif afi in _ADDRESS_SIZE:
        at += 2 + _ADDRESS_SIZE[afi]
    else:
        eid = _lcaf_eid(data, at)
        if eid is None:
            return None
        at = eid[1]
    itr_rlocs = []
    for _ in range(((word >> 8) & 0x1F) + 1):
        afi, = _AFI.unpack_from(data, at)
        size = _ADDRESS_SIZE.get(afi)
        if size is None:
            return None
        itr_rlocs.append(_ADDRESS_TYPE[afi](data[at + 2:at + 2 + size]))
        at += 2 + size
    at += 2   # the record's reserved byte and mask-len
    afi, = _AFI.unpack_from(data, at)
    size = _ADDRESS_SIZE.get(afi)
    if size is not None:
        asked = (0, _ADDRESS_TYPE[afi](data[at + 2:at + 2 + size]), False)
        at += 2 + size
    else:
        eid = _lcaf_eid(data, at)
        if eid is None:
            return None
        asked, at = eid
    if at != end:
        return None
    return Query(nonce, tuple(itr_rlocs), reply_port, (asked,), data)


def _lcaf_eid(data: bytes, at: int) -> tuple[AskedEid, int] | None:
    """An Instance-ID LCAF around an IPv4/IPv6 address at ``at``, and where
    it ends; ``None`` for any other address."""
    afi, lcaf_type, length, iid = _LCAF.unpack_from(data, at)
    if afi != AFI_LCAF or lcaf_type != LCAF_INSTANCE_ID:
        return None
    inner_afi, = _AFI.unpack_from(data, at + 12)
    size = _ADDRESS_SIZE.get(inner_afi)
    if size is None or length != 6 + size:
        return None
    start = at + 14
    return (iid, _ADDRESS_TYPE[inner_afi](data[start:start + size]), True), start + size
