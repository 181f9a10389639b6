"""The common-shape reader of Encapsulated Map-Requests (lisp/common_request.py)
against the codec: whatever it accepts, the codec decodes to the same query
and the Map-Resolver answers the same, byte for byte; whatever else it is
given, it declines without raising."""
from __future__ import annotations

import ipaddress
import random

import pytest

from lisp_controller.lisp import (NO_ADDRESS, AfiListAddress, EidRecord, EncapsulationFormatAddress,
                                  InstanceIdAddress, LispDecodeError, MapRequest, MapRequestRecord,
                                  UnknownLcafAddress, decode, encode, wrap_in_ecm)
from lisp_controller.lisp.common_request import Query, decode_request, recognise
from lisp_controller.lisp.mapserver import Refused
from tests.pcap import udp_frames
from tests.test_lisp_codec import _mutations
from tests.test_mapserver import FIXTURES, IID, apply, fixture, world

V4, V6 = ipaddress.IPv4Address, ipaddress.IPv6Address
# EIDs the world below answers in every way: an endpoint, a negative
# mapping, a hole, a site prefix nobody registered in, a proxied and a
# forwarded registration, a config mapping over a registration, IPv6.
ASKED = [V4(a) for a in ("10.9.0.20", "10.8.1.1", "10.77.0.1", "10.1.200.1", "10.1.1.20", "10.1.2.20",
                         "10.2.9.1", "192.0.2.77")] + [V6("2001:db8:1::1"), V6("2001:db8:9::5")]


def registered_world():
    """A Map-Resolver with the lispers.net registrations of the fixtures (one
    site asking for proxy replies, one not)."""
    _, _, state, server, resolver = world()
    for name in ("map-register-notify-1rloc.pcap", "map-register-notify-2rloc-v4v6-proxy-keyid1.pcap"):
        frame = fixture(name)
        apply(state, server.register(frame.payload, decode(frame.payload), (str(frame.source), frame.source_port)))
    return resolver


def answer(resolver, request):
    """What the resolver does with a request: (outcome, sends) or the refusal."""
    try:
        resolution = resolver.resolve(request)
    except Refused as e:
        return "refused", e.reason
    return resolution.outcome, resolution.sends


def assert_same_as_the_codec(data: bytes, general, fast) -> bool:
    """Whether ``recognise`` took ``data``; if it did, the codec must decode
    it to the same query and both resolvers must answer alike."""
    query = recognise(data)
    if query is None:
        return False
    decoded = decode(data)   # raises if the reader took something the codec refuses
    assert Query.of(decoded)[:4] == query[:4]
    assert answer(fast, query) == answer(general, decoded)
    return True


def random_address(rng: random.Random, version: int | None = None):
    version = version or rng.choice((4, 6))
    return rng.choice([a for a in ASKED if a.version == version] + [
        V4(rng.getrandbits(32)) if version == 4 else V6(rng.getrandbits(128))])


def random_request(rng: random.Random, common: bool) -> bytes:
    """An ECM Map-Request; with ``common``, of the shape ``recognise`` reads
    (module docstring), otherwise sometimes another one."""
    def eid():
        if common or rng.random() < 0.8:
            address = random_address(rng)
            if rng.random() < 0.2:
                return address
            return InstanceIdAddress(rng.choice((IID, IID, 0, 2 ** 24, 2 ** 32 - 1)), address, rng.choice((0, 0, 24)))
        return rng.choice((UnknownLcafAddress(5, rng.randbytes(12)), NO_ADDRESS,
                           InstanceIdAddress(IID, NO_ADDRESS), AfiListAddress((random_address(rng),))))

    def itr():
        if common or rng.random() < 0.9:
            return random_address(rng, rng.choice((4, 4, 6)))
        return EncapsulationFormatAddress(8, random_address(rng, 4))

    source_eid = rng.choice((NO_ADDRESS, random_address(rng), InstanceIdAddress(IID, random_address(rng))))
    if not common and rng.random() < 0.1:
        source_eid = AfiListAddress((random_address(rng),))
    count = 1 if common or rng.random() < 0.7 else rng.choice((0, 2, 3))
    records = tuple(MapRequestRecord(eid(), rng.randrange(256)) for _ in range(count))
    map_reply = None
    if not common and rng.random() < 0.1:
        map_reply = EidRecord(InstanceIdAddress(IID, random_address(rng)), 32)
    flags = {name: rng.random() < 0.2 for name in MapRequest._FLAGS}
    request = MapRequest(rng.randbytes(8), records, tuple(itr() for _ in range(rng.choice((1, 1, 2, 3)))),
                         source_eid, map_reply=map_reply, reserved=rng.getrandbits(32) & MapRequest.RESERVED_MASK,
                         trailer=b"" if common or rng.random() < 0.9 else rng.randbytes(3), **flags)
    inner = random_address(rng)
    ecm = wrap_in_ecm(request, random_address(rng, inner.version), inner, rng.randrange(65536),
                      rng.choice((4342, rng.randrange(65536))), inner_hop_limit=rng.randrange(256),
                      inner_udp_checksum=rng.choice((None, 0)), to_etr=rng.random() < 0.1,
                      security=rng.random() < 0.1, trailer=b"" if common or rng.random() < 0.9 else b"\x00")
    return encode(ecm)


def test_the_lispers_net_requests_are_read_as_the_codec_reads_them():
    general, fast = registered_world(), registered_world()
    payloads = [f.payload for f in udp_frames(FIXTURES / "all-control.pcap") if f.payload[0] >> 4 == 8]
    assert len(payloads) >= 8
    outcomes = set()
    for data in payloads:
        assert assert_same_as_the_codec(data, general, fast), data.hex()
        outcomes.add(answer(fast, recognise(data))[0])
    assert outcomes == {"answered", "negative", "forwarded"}


def test_random_requests_of_the_common_shape_are_read_as_the_codec_reads_them():
    rng = random.Random(7)
    general, fast = registered_world(), registered_world()
    outcomes = set()
    for _ in range(3000):
        data = random_request(rng, common=True)
        assert assert_same_as_the_codec(data, general, fast), data.hex()
        outcomes.add(answer(fast, recognise(data))[0])
    assert outcomes == {"answered", "negative", "forwarded", "refused"}   # refused: an IPv6-only ITR


def test_other_shapes_are_declined_or_read_as_the_codec_reads_them():
    rng = random.Random(8)
    general, fast = registered_world(), registered_world()
    taken = sum(assert_same_as_the_codec(random_request(rng, common=False), general, fast) for _ in range(3000))
    assert 0 < taken < 3000


def test_mutated_requests_never_raise_and_are_declined_or_read_as_the_codec_reads_them():
    rng = random.Random(9)
    general, fast = registered_world(), registered_world()
    seeds = [random_request(rng, common=True) for _ in range(50)]
    seeds += [f.payload for f in udp_frames(FIXTURES / "all-control.pcap") if f.payload[0] >> 4 == 8]
    taken = 0
    for seed in seeds:
        for data in _mutations(rng, seed, 400):
            taken += assert_same_as_the_codec(data, general, fast)   # recognise never raises
    assert taken > 0
    for data in (b"", b"\x80", b"\x80" + bytes(60), bytes(100), rng.randbytes(3)):
        assert recognise(data) is None


def test_decode_request_falls_back_to_the_codec_and_its_error():
    data = random_request(random.Random(3), common=True)
    assert type(decode_request(data)) is Query
    other = bytearray(data)
    other[-1:] = b""   # short: declined, and the codec says why
    with pytest.raises(LispDecodeError):
        decode_request(bytes(other))
    with_trailer = data + b"\x00"   # another shape the codec takes: its value
    assert recognise(with_trailer) is None and decode_request(with_trailer) == decode(with_trailer)
