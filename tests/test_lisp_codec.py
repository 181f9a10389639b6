"""The LISP control-message codec against real lispers.net captures, random
round trips, a bounded fuzz for totality, and tshark as an independent decoder.

The fixtures and the values asserted here are described in
tests/fixtures/lisp-control/README.md.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import random
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from lisp_controller.lisp import (
    ALG_HMAC_SHA_1, ALG_HMAC_SHA_256, ENCAP_LISP, ENCAP_VXLAN_GPE, NO_ADDRESS, Action, AfiListAddress, AuthKey,
    EidRecord, EncapsulatedControlMessage, EncapsulationFormatAddress, InstanceIdAddress, LispDecodeError,
    LocatorRecord, MapNotify, MapNotifyAck, MapRegister, MapReply, MapRequest, MapRequestRecord,
    UnknownLcafAddress, decode, encode, key_and_alg, sign, unwrap_ecm, verify, wrap_in_ecm)
from lisp_controller.lisp.headers import build_ip_udp, internet_checksum, udp_checksum
from tests.pcap import ethernet_ipv4_udp, udp_frames, write_pcap

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lisp-control"
PCAPS = sorted(p.name for p in FIXTURES.glob("*.pcap"))
KEYS = {1: "fixture-A-key1", 3: "fixture-A-key3"}
IID = 1000
V4, V6 = ipaddress.IPv4Address, ipaddress.IPv6Address


def eid(address: str) -> InstanceIdAddress:
    return InstanceIdAddress(IID, ipaddress.ip_address(address))


def frames(name: str):
    return udp_frames(FIXTURES / name)


def messages(name: str) -> list:
    return [decode(f.payload) for f in frames(name)]


def loc(address: str, priority: int, weight: int, local: bool, probed: bool = False) -> LocatorRecord:
    return LocatorRecord(V4(address), priority, weight, 255, 0, local=local, probed=probed, reachable=True)


# ---------------------------------------------------------------- fixtures

@pytest.mark.parametrize("name", PCAPS)
def test_every_fixture_frame_decodes_and_reencodes_byte_identical(name):
    found = frames(name)
    assert found, name
    for frame in found:
        assert encode(decode(frame.payload)) == frame.payload, (name, frame.number)


def test_all_control_holds_all_38_frames_and_every_subset_comes_from_it():
    everything = [f.payload for f in frames("all-control.pcap")]
    assert len(everything) == 38
    for name in PCAPS:
        assert {f.payload for f in frames(name)} <= set(everything), name


def test_map_register_and_notify_with_one_rloc():
    register_frame, notify_frame = frames("map-register-notify-1rloc.pcap")
    assert (str(register_frame.source), register_frame.source_port, str(register_frame.destination),
            register_frame.destination_port) == ("192.168.77.2", 44286, "192.168.77.1", 4342)
    register, notify = decode(register_frame.payload), decode(notify_frame.payload)
    record = EidRecord(eid("10.1.1.0"), 24, (loc("192.168.77.2", 1, 100, local=True),), ttl=3,
                       action=Action.NO_ACTION, authoritative=True, map_version=0)
    assert isinstance(register, MapRegister)
    assert register.nonce == bytes.fromhex("01dfdfdfddccbbaa")
    assert (register.key_id, register.alg_id, len(register.auth_data)) == (1, ALG_HMAC_SHA_256, 32)
    assert (register.proxy_reply, register.security, register.rtr) == (False, False, False)
    assert register.want_map_notify and register.use_ttl_for_timeout and register.reserved == 0
    assert register.records == (record,)
    assert register.xtr_id == bytes.fromhex("00000000000000002e25c11ad9822db6") and register.site_id == 0
    assert register.trailer == b""
    # lispers.net's Map-Notify: I clear, xTR-ID and site-ID appended anyway
    assert isinstance(notify, MapNotify)
    assert (notify.nonce, notify.key_id, notify.alg_id) == (register.nonce, 1, ALG_HMAC_SHA_256)
    assert notify.xtr_id is None and not notify.rtr and notify.records == (record,)
    assert notify.trailer == register.xtr_id + bytes(8)
    assert notify_frame.destination_port == 44286


def test_map_register_with_two_rlocs_ipv4_and_ipv6_eids_proxy_reply():
    register, notify = messages("map-register-notify-2rloc-v4v6-proxy-keyid1.pcap")
    locators = (loc("192.168.77.3", 1, 70, local=True), loc("192.168.77.4", 2, 30, local=False))
    records = (EidRecord(eid("10.1.2.0"), 24, locators, ttl=3, authoritative=True),
               EidRecord(eid("2001:db8:1::"), 48, locators, ttl=3, authoritative=True))
    assert register.proxy_reply and register.want_map_notify and register.xtr_id is not None
    assert register.nonce == bytes.fromhex("01dfdfdfddccbbaa")
    assert (register.key_id, register.alg_id) == (1, 2)
    assert register.records == records
    assert isinstance(notify, MapNotify) and notify.records == records and len(notify.trailer) == 24
    assert (notify.key_id, notify.nonce) == (1, register.nonce)
    # the IPv6 EID: IID-LCAF type 2, length 22, AFI 2
    assert bytes.fromhex("400300000200" "0016" "000003e8" "0002" "20010db80001") in encode(register)


def test_map_register_with_key_id_3_to_the_second_map_server_address():
    register_frame, notify_frame = frames("map-register-notify-keyid3.pcap")
    register, notify = decode(register_frame.payload), decode(notify_frame.payload)
    assert str(register_frame.destination) == "192.168.77.11" and str(notify_frame.source) == "192.168.77.1"
    assert register.nonce == notify.nonce == bytes.fromhex("02dfdfdfddccbbaa")
    assert (register.key_id, register.alg_id) == (notify.key_id, notify.alg_id) == (3, 2)
    assert key_and_alg(register_frame.payload) == (3, 2)


def _map_request(nonce: str, target: str, source_eid=NO_ADDRESS, itr: str = "192.168.77.6") -> MapRequest:
    return MapRequest(bytes.fromhex(nonce), (MapRequestRecord(eid(target), 32),), (V4(itr),), source_eid)


def test_lig_ecm_map_request_forwarded_by_the_map_server_and_the_etr_reply():
    (ecm_frame, forwarded_frame, reply_frame) = frames("lig-ecm-map-request-ms-forward-etr-reply.pcap")
    ecm, forwarded, reply = (decode(f.payload) for f in (ecm_frame, forwarded_frame, reply_frame))
    request = _map_request("475ac1101d0edfdf", "10.1.1.20")
    assert isinstance(ecm, EncapsulatedControlMessage)
    assert (ecm.security, ecm.ddt_originated, ecm.to_etr, ecm.to_map_server) == (False,) * 4
    assert (ecm.inner_source, ecm.inner_destination) == (V4("192.168.77.6"), V4("10.1.1.20"))
    assert (ecm.inner_source_port, ecm.inner_destination_port, ecm.inner_hop_limit) == (4342, 4342, 128)
    assert ecm.inner_udp_checksum == 0
    assert ecm.message == request
    assert not any((request.authoritative, request.probe, request.smr, request.pitr, request.smr_invoked))
    assert request.map_reply is None
    # the Map-Server rewrites the inner source to the target EID
    assert forwarded_frame.source_port == 58438
    assert (forwarded.inner_source, forwarded.inner_destination) == (V4("10.1.1.20"), V4("10.1.1.20"))
    assert forwarded.message == request
    assert isinstance(reply, MapReply) and (reply.probe, reply.echo_nonce_capable, reply.security) == (False,) * 3
    assert reply.nonce == request.nonce
    assert reply.records == (EidRecord(eid("10.1.1.0"), 24, (loc("192.168.77.2", 1, 100, local=True),),
                                       ttl=1440, authoritative=True),)


PROXY_LOCATORS = (loc("192.168.77.3", 1, 70, local=False), loc("192.168.77.4", 2, 30, local=False))


def test_map_server_proxy_reply_with_two_rlocs():
    ecm, reply = messages("lig-ecm-map-request-proxy-reply-2rloc.pcap")
    assert ecm.message == _map_request("68b5c1101d0edfdf", "10.1.2.20")
    assert reply.records == (EidRecord(eid("10.1.2.0"), 24, PROXY_LOCATORS, ttl=1440, authoritative=False),)


def test_ipv6_eid_ecm_and_proxy_reply():
    ecm, reply = messages("lig-ecm-map-request-proxy-reply-ipv6.pcap")
    assert (ecm.inner_source, ecm.inner_destination) == (V6("2001:db8:1::1"), V6("2001:db8:1::1"))
    assert (ecm.inner_hop_limit, ecm.inner_udp_checksum) == (128, 0)
    assert ecm.message.records == (MapRequestRecord(eid("2001:db8:1::1"), 128),)
    assert ecm.message.source_eid == NO_ADDRESS and ecm.message.itr_rlocs == (V4("192.168.77.6"),)
    assert reply.records == (EidRecord(eid("2001:db8:1::"), 48, PROXY_LOCATORS, ttl=1440),)


def test_negative_map_replies():
    found = frames("negative-map-reply.pcap")
    m = [decode(f.payload) for f in found]
    assert m[0].message.records == (MapRequestRecord(eid("10.1.200.1"), 32),)
    assert m[1].records == (EidRecord(eid("10.1.200.1"), 32, (), ttl=1, action=Action.NATIVELY_FORWARD),)
    assert m[2].message.records == (MapRequestRecord(eid("10.9.9.9"), 32),)
    assert m[3].records == (EidRecord(eid("10.9.9.9"), 32, (), ttl=15, action=Action.NATIVELY_FORWARD),)
    assert (str(found[4].source), found[4].source_port) == ("192.168.77.5", 34563)
    assert (m[4].inner_source, m[4].inner_source_port) == (V4("10.1.3.20"), 36485)
    assert (m[4].inner_destination, m[4].inner_destination_port) == (V4("10.1.200.1"), 4342)
    assert m[4].message.source_eid == eid("10.1.3.20")
    assert found[5].destination_port == 36485 and m[5].records[0].ttl == 1
    assert m[5].records[0].action == Action.NATIVELY_FORWARD and m[5].records[0].mask_len == 32


def test_itr_map_cache_miss_requests():
    found = frames("itr-map-cache-miss.pcap")
    m = [decode(f.payload) for f in found]
    request = _map_request("584b529943930311", "10.1.1.20", source_eid=eid("10.1.3.20"), itr="192.168.77.5")
    assert m[0].message == request
    assert (m[0].inner_source, m[0].inner_source_port, m[0].inner_destination) == (
        V4("10.1.3.20"), 36485, V4("10.1.1.20"))
    assert m[1].inner_source == V4("10.1.3.20") and m[1].message == request   # kept when forwarded
    assert m[2].records == (EidRecord(eid("10.1.1.0"), 24, (loc("192.168.77.2", 1, 100, local=True),),
                                      ttl=1440, authoritative=True),)
    assert m[3].message.records == (MapRequestRecord(eid("10.1.2.20"), 32),)
    assert m[4].records == (EidRecord(eid("10.1.2.0"), 24, PROXY_LOCATORS, ttl=1440),)
    negative = frames("negative-map-reply.pcap")
    assert [f.payload for f in found[5:]] == [f.payload for f in negative[4:]]


def test_rloc_probes_and_probe_replies():
    m = messages("rloc-probe.pcap")
    assert len(m) == 14 and not any(isinstance(x, EncapsulatedControlMessage) for x in m)
    for index, prefix in ((0, "10.1.1.0"), (1, "10.1.2.0")):   # triggered: AFI 0, mask-len 0
        assert m[index].probe and m[index].source_eid == eid(prefix)
        assert m[index].records == (MapRequestRecord(NO_ADDRESS, 0),)
    for index, prefix in ((2, "10.1.1.0"), (3, "10.1.2.0")):   # periodic
        assert m[index].probe and m[index].source_eid == NO_ADDRESS
        assert m[index].records == (MapRequestRecord(eid(prefix), 24),)
    assert m[4].probe and m[4].nonce == m[3].nonce
    assert m[4].records == (EidRecord(eid("10.1.2.0"), 24, (loc("192.168.77.3", 1, 70, True, True),
                                                            loc("192.168.77.4", 2, 30, True, True)),
                                      ttl=1440, authoritative=True),)
    assert m[5].probe and m[5].nonce == m[2].nonce
    assert m[5].records[0].locators == (loc("192.168.77.2", 1, 100, True, True),)
    assert m[4].reserved == m[5].reserved == 0x3F00   # lispers.net sets these "reserved" bits in probe replies
    for first in (6, 10):
        assert [type(x) for x in m[first:first + 4]] == [MapRequest, MapRequest, MapReply, MapReply]
        assert m[first + 2].nonce == m[first + 1].nonce and m[first + 3].nonce == m[first].nonce


# ---------------------------------------------------------------- authentication

def _authenticated_frames():
    for name in PCAPS:
        for frame in frames(name):
            if frame.payload[0] >> 4 in (3, 4):
                yield name, frame


def test_every_register_and_notify_verifies_with_its_key_only():
    checked = 0
    for name, frame in _authenticated_frames():
        key_id, alg_id = key_and_alg(frame.payload)
        assert alg_id == ALG_HMAC_SHA_256
        assert verify(frame.payload, KEYS[key_id]), (name, frame.number)
        assert verify(frame.payload, AuthKey(key_id, KEYS[key_id].encode()))
        assert not verify(frame.payload, KEYS[4 - key_id])           # the other key
        assert not verify(frame.payload, AuthKey(4 - key_id, KEYS[key_id]))  # right secret, wrong key-id
        assert not verify(frame.payload, KEYS[key_id] + "x")
        checked += 1
    assert checked == 12   # 6 in all-control.pcap, 6 in the three register files


def test_a_flipped_bit_anywhere_fails_verification():
    for name, frame in _authenticated_frames():
        key = KEYS[frame.payload[12]]
        for position in range(len(frame.payload)):
            tampered = bytearray(frame.payload)
            tampered[position] ^= 0x01
            assert not verify(bytes(tampered), key), (name, frame.number, position)
        assert not verify(frame.payload[:-1], key)


def test_sign_reproduces_the_captured_hmac():
    for name, frame in _authenticated_frames():
        message = decode(frame.payload)
        key = KEYS[message.key_id]
        assert sign(replace(message, auth_data=b""), key, message.key_id) == frame.payload, name
        assert sign(frame.payload, AuthKey(message.key_id, key)) == frame.payload


def test_sign_with_sha1_and_sha256():
    register = MapRegister(bytes(8), (EidRecord(eid("10.0.0.0"), 8),), want_map_notify=True)
    for alg_id, length in ((ALG_HMAC_SHA_1, 20), (ALG_HMAC_SHA_256, 32)):
        wire = sign(register, AuthKey(7, b"secret", alg_id))
        signed = decode(wire)
        assert (signed.key_id, signed.alg_id, len(signed.auth_data)) == (7, alg_id, length)
        assert verify(wire, b"secret") and verify(wire, "secret") and not verify(wire, b"Secret")
    assert not verify(encode(register), b"secret")            # alg-id 0: no authentication
    assert not verify(encode(MapReply(bytes(8), ())), b"secret")
    with pytest.raises(LispDecodeError):
        sign(encode(MapReply(bytes(8), ())), b"secret", 1)


def test_auth_key_repr_hides_the_secret():
    key = AuthKey(3, b"fixture-A-key3")
    assert "fixture" not in repr(key) and "fixture" not in str(key) and "3" in repr(key)
    assert AuthKey(3, "fixture-A-key3") == key


# ---------------------------------------------------------------- random round trips

def random_ip(rng: random.Random, version: int | None = None):
    version = version or rng.choice((4, 6))
    return V4(rng.getrandbits(32)) if version == 4 else V6(rng.getrandbits(128))


def random_address(rng: random.Random, depth: int = 0):
    kinds = ["none", "ip", "ip"] + (["iid", "iid", "list", "encap", "unknown"] if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "none":
        return NO_ADDRESS
    if kind == "ip":
        return random_ip(rng)
    if kind == "iid":
        return InstanceIdAddress(rng.getrandbits(32), random_address(rng, depth + 1), rng.choice((0, 0, 24, 32)))
    if kind == "list":
        return AfiListAddress(tuple(random_address(rng, depth + 1) for _ in range(rng.randrange(4))))
    if kind == "encap":
        return EncapsulationFormatAddress(rng.choice((ENCAP_LISP, ENCAP_VXLAN_GPE, rng.getrandbits(32))),
                                          random_address(rng, depth + 1))
    return UnknownLcafAddress(rng.choice([t for t in range(256) if t not in (1, 2, 16)]),
                              rng.randbytes(rng.randrange(20)), rng.getrandbits(8), rng.getrandbits(8),
                              rng.getrandbits(8))


def random_locator(rng: random.Random) -> LocatorRecord:
    return LocatorRecord(random_address(rng), *(rng.getrandbits(8) for _ in range(4)),
                         local=rng.random() < 0.5, probed=rng.random() < 0.5, reachable=rng.random() < 0.5)


def random_eid_record(rng: random.Random) -> EidRecord:
    return EidRecord(random_address(rng), rng.getrandbits(8),
                     tuple(random_locator(rng) for _ in range(rng.randrange(4))),
                     rng.getrandbits(32), rng.randrange(8), rng.random() < 0.5, rng.getrandbits(12))


def random_reserved(rng: random.Random, mask: int) -> int:
    return rng.getrandbits(32) & mask if rng.random() < 0.3 else 0


def random_message(rng: random.Random, allow_ecm: bool = True):
    kind = rng.choice(["request", "reply", "register", "notify", "ack"] + (["ecm"] if allow_ecm else []))
    nonce, flag = rng.randbytes(8), (lambda: rng.random() < 0.5)
    trailer = rng.randbytes(rng.choice((0, 0, 0, 24, rng.randrange(40))))
    if kind == "request":
        return MapRequest(nonce, tuple(MapRequestRecord(random_address(rng), rng.getrandbits(8))
                                       for _ in range(rng.randrange(3))),
                          tuple(random_address(rng) for _ in range(rng.randrange(1, 4))), random_address(rng),
                          flag(), flag(), flag(), flag(), flag(),
                          random_eid_record(rng) if flag() else None,
                          random_reserved(rng, MapRequest.RESERVED_MASK), trailer)
    if kind == "reply":
        return MapReply(nonce, tuple(random_eid_record(rng) for _ in range(rng.randrange(4))), flag(), flag(),
                        flag(), random_reserved(rng, MapReply.RESERVED_MASK), trailer)
    if kind in ("register", "notify", "ack"):
        cls = {"register": MapRegister, "notify": MapNotify, "ack": MapNotifyAck}[kind]
        xtr_id = rng.randbytes(16) if flag() else None
        return cls(nonce, tuple(random_eid_record(rng) for _ in range(rng.randrange(4))), rng.getrandbits(8),
                   rng.getrandbits(8), rng.randbytes(rng.choice((0, 20, 32))), flag(), flag(), flag(), flag(),
                   flag(), xtr_id, rng.getrandbits(64) if xtr_id else 0,
                   random_reserved(rng, MapRegister.RESERVED_MASK), trailer)
    version = rng.choice((4, 6))
    return EncapsulatedControlMessage(random_message(rng, allow_ecm=False), random_ip(rng, version),
                                      random_ip(rng, version), rng.getrandbits(16), rng.getrandbits(16),
                                      rng.getrandbits(8), rng.choice((None, 0)), flag(), flag(), flag(), flag(),
                                      random_reserved(rng, EncapsulatedControlMessage.RESERVED_MASK), trailer)


def test_random_messages_round_trip():
    rng = random.Random(20261202)
    seen = set()
    for _ in range(4000):
        message = random_message(rng)
        wire = encode(message)
        assert decode(wire) == message, message
        assert rebuilt(decode(wire)) == message
        assert encode(decode(wire)) == wire
        seen.add(type(message) if not isinstance(message, EncapsulatedControlMessage)
                 else (type(message), type(message.message)))
    assert len(seen) == 5 + 5   # every message type, and each inside an ECM


def test_random_records_and_addresses_round_trip_inside_a_map_reply():
    rng = random.Random(7)
    for _ in range(3000):
        record = random_eid_record(rng)
        assert decode(encode(MapReply(bytes(8), (record,)))).records == (record,)


def test_an_eid_written_from_integers_is_what_the_codec_writes_for_its_value():
    """The Map-Resolver writes the EID of its answers from the prefix's
    integers (addresses.eid_address_bytes); the bytes must be the codec's
    own encoding of the same value, bare or in an Instance-ID LCAF."""
    from lisp_controller.lisp.addresses import eid_address_bytes, encode_address
    rng = random.Random(4342)
    for _ in range(3000):
        version = rng.choice((4, 6))
        network = rng.getrandbits(32 if version == 4 else 128)
        iid = rng.choice((0, 1, rng.getrandbits(24), 0xFFFFFFFF))
        wrap = rng.random() < 0.5
        address = ipaddress.ip_address(network) if version == 4 else ipaddress.IPv6Address(network)
        value = InstanceIdAddress(iid, address) if wrap or iid else address
        assert eid_address_bytes(iid, version, network, wrap) == encode_address(value), (iid, address, wrap)


def test_unknown_lcaf_types_decode_as_opaque_values():
    geo = UnknownLcafAddress(5, bytes(range(12)))
    record = EidRecord(eid("10.0.0.0"), 8, (LocatorRecord(geo),))
    wire = encode(MapReply(bytes(8), (record,)))
    assert bytes.fromhex("40030000050000 0c".replace(" ", "")) in wire
    assert decode(wire).records[0].locators[0].address == geo


def test_the_internet_checksum_is_the_one_complement_sum_of_rfc_1071():
    def by_words(data: bytes) -> int:   # RFC 1071, word by word
        data += b"\x00" * (len(data) % 2)
        total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        return ~total & 0xFFFF
    rng = random.Random(1071)
    cases = [b"", b"\x00" * 7, b"\xff\xff", b"\xff\xff" * 3, b"\x00\x01\xff\xfe", b"\x80"]
    cases += [rng.randbytes(rng.randrange(80)) for _ in range(5000)]
    for data in cases:
        assert internet_checksum(data) == by_words(data), data.hex()


def test_ecm_wrap_and_unwrap_compute_a_real_inner_udp_checksum():
    request = _map_request("0102030405060708", "10.1.1.20", itr="192.0.2.1")
    for source, destination in (("10.1.3.20", "10.1.1.20"), ("2001:db8:1::1", "2001:db8:2::2")):
        ecm = wrap_in_ecm(request, ipaddress.ip_address(source), ipaddress.ip_address(destination), 36485)
        wire = encode(ecm)
        inner_udp = wire[4 + (20 if ecm.inner_source.version == 4 else 40):]
        segment = inner_udp[:6] + b"\x00\x00" + inner_udp[8:]
        assert int.from_bytes(inner_udp[6:8], "big") == udp_checksum(ecm.inner_source, ecm.inner_destination,
                                                                      segment) != 0
        unwrapped = unwrap_ecm(wire)
        assert unwrapped == ecm and unwrapped.inner_udp_checksum is None
        assert (unwrapped.inner_source_port, unwrapped.inner_destination_port) == (36485, 4342)
        assert unwrapped.message == request
    with pytest.raises(LispDecodeError):
        unwrap_ecm(encode(request))
    nested = b"\x80\x00\x00\x00" + build_ip_udp(V4("10.0.0.1"), V4("10.0.0.2"), 4342, 4342, encode(ecm))
    with pytest.raises(LispDecodeError, match="ECM inside an ECM"):
        decode(nested)
    bad = bytearray(encode(wrap_in_ecm(request, V4("10.0.0.1"), V4("10.0.0.2"))))
    bad[-1] ^= 0xFF   # payload changed after checksumming: the now-wrong checksum is kept, re-encoding stays exact
    assert decode(bytes(bad)).inner_udp_checksum is not None and encode(decode(bytes(bad))) == bytes(bad)


def test_values_are_hashable_and_lists_become_tuples():
    record = EidRecord(eid("10.0.0.0"), 8, [LocatorRecord(V4("192.0.2.1"))])
    reply = MapReply(bytes(8), [record])
    assert reply.records == (record,) and record.locators == (LocatorRecord(V4("192.0.2.1")),)
    assert decode(encode(reply)) == reply and len({reply, decode(encode(reply))}) == 1
    assert AfiListAddress([V4("192.0.2.1")]).addresses == (V4("192.0.2.1"),)


def test_invalid_values_are_refused_at_construction():
    record = EidRecord(eid("10.0.0.0"), 8)
    for build in (lambda: MapReply(b"short", ()),
                  lambda: MapRequest(bytes(8), (), ()),                       # no ITR-RLOC
                  lambda: MapRequest(bytes(8), (), (V4("10.0.0.1"),) * 33),
                  lambda: MapReply(bytes(8), (record,), reserved=0x10000000),
                  lambda: MapRegister(bytes(8), (), key_id=256),
                  lambda: MapRegister(bytes(8), (), xtr_id=bytes(15)),
                  lambda: MapRegister(bytes(8), (), site_id=1),
                  lambda: EidRecord(eid("10.0.0.0"), 256),
                  lambda: EidRecord(eid("10.0.0.0"), 8, map_version=4096),
                  lambda: LocatorRecord(V4("10.0.0.1"), priority=256),
                  lambda: InstanceIdAddress(1 << 32, V4("10.0.0.1")),
                  lambda: UnknownLcafAddress(2, b""),
                  lambda: wrap_in_ecm(MapReply(bytes(8), ()), V4("10.0.0.1"), V6("::1"))):
        with pytest.raises((ValueError, TypeError)):
            build()


# ---------------------------------------------------------------- totality

def _decodes_or_refuses(data: bytes) -> float:
    """Only LispDecodeError may escape decode, each call is quick, and what
    does decode re-encodes to a fixed point (reserved bits inside records are
    normalised to zero, so the first encoding may differ from the input)."""
    start = time.perf_counter()
    try:
        message = decode(data)
    except LispDecodeError:
        message = None
    elapsed = time.perf_counter() - start
    if message is not None:
        wire = encode(message)
        assert encode(decode(wire)) == wire
        assert rebuilt(message) == message
    assert verify(data, b"key") in (True, False)
    return elapsed


def rebuilt(value):
    """``value`` made again, innermost first, through the checked
    constructors: decoding skips their checks (addresses.decoded), so
    anything decode returns must pass them, and equal what they make."""
    if isinstance(value, tuple):
        return tuple(rebuilt(v) for v in value)
    if dataclasses.is_dataclass(value):
        fields = {f.name: rebuilt(getattr(value, f.name)) for f in dataclasses.fields(value)}
        made = type(value)(**fields)
        assert hash(made) == hash(value)
        return made
    return value


def _mutations(rng: random.Random, seed: bytes, count: int):
    for _ in range(count):
        data = bytearray(seed)
        choice = rng.randrange(5)
        if choice == 0 and data:                     # truncate
            del data[rng.randrange(len(data)):]
        elif choice == 1 and data:                   # flip some bytes
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.getrandbits(8)
        elif choice == 2:                            # insert or append junk
            position = rng.randrange(len(data) + 1)
            data[position:position] = rng.randbytes(rng.randrange(1, 9))
        elif choice == 3 and len(data) > 4:          # maximise a count or length byte
            data[rng.randrange(len(data))] = 0xFF
        else:                                        # drop a slice
            if data:
                start = rng.randrange(len(data))
                del data[start:start + rng.randrange(1, 9)]
        yield bytes(data)


def test_fuzz_random_bytes_only_raise_the_codec_error():
    rng = random.Random(1)
    slowest = 0.0
    for _ in range(20000):
        data = rng.randbytes(rng.randrange(64))
        if data and rng.random() < 0.7:   # mostly start with a real message type
            data = bytes((rng.choice((0x10, 0x20, 0x30, 0x40, 0x50, 0x80)) | (data[0] & 0x0F),)) + data[1:]
        slowest = max(slowest, _decodes_or_refuses(data))
    assert slowest < 1.0  # not a speed test: a runaway loop, never a busy machine, fails it


def test_fuzz_mutated_fixtures_and_random_messages_only_raise_the_codec_error():
    rng = random.Random(2)
    seeds = [f.payload for f in frames("all-control.pcap")]
    seeds += [encode(random_message(rng)) for _ in range(100)]
    slowest = 0.0
    for seed in seeds:
        for data in _mutations(rng, seed, 20000 // len(seeds) + 1):
            slowest = max(slowest, _decodes_or_refuses(data))
    assert slowest < 1.0  # not a speed test: a runaway loop, never a busy machine, fails it
    # counts far beyond the packet are refused before any loop runs
    for header in ("200000ff", "300000ff", "100000ff", "10001fff"):
        with pytest.raises(LispDecodeError):
            decode(bytes.fromhex(header) + bytes(8 + 12))
    address = b"\x00\x01" + bytes(4)
    for _ in range(20):   # Instance-ID LCAFs nested 20 deep: refused, not a RecursionError
        body = (1).to_bytes(4, "big") + address
        address = bytes.fromhex("400300000200") + len(body).to_bytes(2, "big") + body
    record = (1).to_bytes(4, "big") + bytes((0, 32, 0, 0, 0, 0)) + address
    with pytest.raises(LispDecodeError, match="nested deeper"):
        decode(bytes.fromhex("20000001") + bytes(8) + record)


# ---------------------------------------------------------------- tshark as an independent decoder

ERROR_SEVERITY = 0x00800000   # wireshark's PI_ERROR
UNDISSECTED_LCAF = "Not dissected yet (report to wireshark.org)"   # tshark 4.0 on LCAF type 16
GEO = UnknownLcafAddress(5, bytes(12) + b"\x00\x01" + V4("192.0.2.99").packed)  # geo LCAF with its RLOC


def _tshark_set():
    """One message of each kind, as the controller will send them."""
    request = MapRequest(bytes.fromhex("0011223344556677"),
                         (MapRequestRecord(eid("10.1.1.20"), 32), MapRequestRecord(eid("2001:db8:1::1"), 128)),
                         (V4("192.0.2.5"), V6("2001:db8:ff::5")), eid("10.1.3.20"),
                         authoritative=True, smr=True, pitr=True,
                         map_reply=EidRecord(eid("10.1.3.0"), 24, (loc("192.0.2.5", 1, 100, local=True),)))
    two_rlocs = (LocatorRecord(V4("192.0.2.3"), 1, 70, 255, 0, local=True, probed=True),
                 LocatorRecord(V4("192.0.2.4"), 2, 30, 254, 1, local=False, probed=False, reachable=False))
    reply = MapReply(bytes.fromhex("8899aabbccddeeff"), (
        EidRecord(eid("10.1.2.0"), 24, two_rlocs, ttl=1440, authoritative=True, map_version=5),
        EidRecord(eid("2001:db8:1::"), 48, (LocatorRecord(EncapsulationFormatAddress(
            ENCAP_LISP | ENCAP_VXLAN_GPE, V4("192.0.2.3"))), LocatorRecord(GEO, 3, 0)), ttl=60),
        EidRecord(eid("10.9.9.9"), 32, (), ttl=15, action=Action.NATIVELY_FORWARD),
        EidRecord(eid("10.8.0.0"), 16, (), ttl=1, action=Action.DROP_POLICY_DENIED)), probe=True)
    register = MapRegister(bytes.fromhex("01dfdfdfddccbbaa"), reply.records[:2], proxy_reply=True,
                           use_ttl_for_timeout=True, want_map_notify=True,
                           xtr_id=bytes(range(16)), site_id=7)
    notify = MapNotify(register.nonce, register.records)
    return [("request", encode(request), request), ("reply", encode(reply), reply),
            ("register", sign(register, AuthKey(1, b"k1")), register),
            ("notify", sign(notify, AuthKey(3, b"k3", ALG_HMAC_SHA_1)), notify),
            ("ecm4", encode(wrap_in_ecm(request, V4("10.1.3.20"), V4("10.1.1.20"), 36485)), request),
            ("ecm6", encode(wrap_in_ecm(request, V6("2001:db8:3::20"), V6("2001:db8:1::1"))), request)]


def _dissect(payloads: list[bytes], tmp_path: Path) -> list[list[tuple[str, str]]]:
    """tshark's fields for each packet, in order, as (name, shown value)."""
    pcap = tmp_path / "encoded.pcap"
    write_pcap(pcap, [ethernet_ipv4_udp("192.0.2.5", "192.0.2.1", 4342, 4342, p) for p in payloads])
    try:
        pdml = subprocess.run(["tshark", "-r", str(pcap), "-d", "udp.port==4342,lisp", "-o", "ip.check_checksum:TRUE",
                               "-o", "udp.check_checksum:TRUE", "-T", "pdml"],
                              capture_output=True, check=True, timeout=120).stdout
    finally:
        pcap.unlink()
    return [[(f.get("name"), f.get("show")) for f in packet.iter("field")]
            for packet in ET.fromstring(pdml).iter("packet")]


def _values(fields, name: str) -> list[str]:
    return [show for field, show in fields if field == name]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed (scripts/install.sh)")
def test_tshark_dissects_our_messages_as_we_encoded_them(tmp_path):
    cases = _tshark_set()
    packets = dict(zip([name for name, _, _ in cases], _dissect([wire for _, wire, _ in cases], tmp_path)))
    for name, fields in packets.items():
        assert not [f for f, _ in fields if f and f.startswith("_ws.malformed")], name
        assert not [s for f, s in fields if f == "_ws.expert.severity" and int(s) >= ERROR_SEVERITY], name
        assert "0" not in _values(fields, "ip.checksum.status") + _values(fields, "udp.checksum.status"), name
        expected = {UNDISSECTED_LCAF} if name in ("reply", "register", "notify") else set()
        assert set(_values(fields, "_ws.expert.message")) == expected, name

    request = packets["request"]
    assert _values(request, "lisp.type") == ["1"]
    assert [_values(request, "lisp.mreq.flags." + f) for f in ("auth", "mrp", "probe", "smr", "pitr", "smri")] \
        == [["1"], ["1"], ["0"], ["1"], ["1"], ["0"]]
    assert _values(request, "lisp.irc") == ["1"] and _values(request, "lisp.records") == ["2"]
    assert _values(request, "lisp.nonce") == ["0x0011223344556677"]
    assert _values(request, "lisp.mreq.itr_rloc_ipv4") == ["192.0.2.5"]
    assert _values(request, "lisp.mreq.itr_rloc_ipv6") == ["2001:db8:ff::5"]
    assert _values(request, "lisp.lcaf.iid") == ["1000"] * 4   # source EID, 2 records, Map-Reply record
    assert _values(request, "lisp.lcaf.iid.ipv4") == ["10.1.3.20", "10.1.1.20", "10.1.3.0"]
    assert _values(request, "lisp.lcaf.iid.ipv6") == ["2001:db8:1::1"]
    assert _values(request, "lisp.mreq.record.prefix.length") == ["32", "128"]
    assert _values(request, "lisp.loc.locator") == ["192.0.2.5"]

    reply = packets["reply"]
    assert _values(reply, "lisp.mrep.flags.probe") == ["1"] and _values(reply, "lisp.records") == ["4"]
    assert _values(reply, "lisp.nonce") == ["0x8899aabbccddeeff"]
    assert _values(reply, "lisp.mapping.ttl") == ["1440", "60", "15", "1"]
    assert _values(reply, "lisp.mapping.eid.masklen") == ["24", "48", "32", "16"]
    assert _values(reply, "lisp.mapping.act") == ["0", "0", "1", "4"]
    assert _values(reply, "lisp.mapping.auth") == ["1", "0", "0", "0"]
    assert _values(reply, "lisp.mapping.ver") == ["5", "0", "0", "0"]
    assert _values(reply, "lisp.mapping.loccnt") == ["2", "2", "0", "0"]
    assert _values(reply, "lisp.lcaf.iid.ipv4") == ["10.1.2.0", "10.9.9.9", "10.8.0.0"]
    assert _values(reply, "lisp.lcaf.iid.ipv6") == ["2001:db8:1::"]
    assert _values(reply, "lisp.loc.priority") == ["1", "2", "1", "3"]
    assert _values(reply, "lisp.loc.weight") == ["70", "30", "100", "0"]
    assert _values(reply, "lisp.loc.multicast_priority") == ["255", "254", "255", "255"]
    assert _values(reply, "lisp.loc.multicast_weight") == ["0", "1", "0", "0"]
    assert [_values(reply, "lisp.loc.flags." + f)[:2] for f in ("local", "probe", "reach")] \
        == [["1", "0"], ["1", "0"], ["1", "0"]]
    assert _values(reply, "lisp.loc.locator") == ["192.0.2.3", "192.0.2.4"]
    # tshark 4.0 frames the type-16 LCAF by its length but does not dissect it (a warning, not an error);
    # the geo LCAF, opaque to us, it dissects fully
    assert _values(reply, "lisp.lcaf.type") == ["2", "2", "16", "5", "2", "2"]
    assert _values(reply, "lisp.lcaf.header")[2] == "00:00:10:00:00:0a"   # type 16, length 10
    assert _values(reply, "lisp.lcaf.geo.ipv4") == ["192.0.2.99"]

    register = packets["register"]
    assert [_values(register, "lisp.mreg.flags." + f) for f in ("pmr", "sec", "xtrid", "rtr", "wmn")] \
        == [["1"], ["0"], ["1"], ["0"], ["1"]]
    assert _values(register, "lisp.keyid") == ["0x0102"] and _values(register, "lisp.authlen") == ["32"]
    assert _values(register, "lisp.auth")[0].replace(":", "") == decode(cases[2][1]).auth_data.hex()
    assert _values(register, "lisp.xtrid")[0].replace(":", "") == bytes(range(16)).hex()
    assert _values(register, "lisp.siteid")[0].replace(":", "") == "0000000000000007"
    assert _values(register, "lisp.mapping.ttl") == ["1440", "60"]
    assert verify(cases[2][1], b"k1") and not verify(cases[2][1], b"k3")

    notify = packets["notify"]
    assert _values(notify, "lisp.type") == ["4"] and _values(notify, "lisp.mnot.flags.xtrid") == ["0"]
    assert _values(notify, "lisp.keyid") == ["0x0301"] and _values(notify, "lisp.authlen") == ["20"]
    assert _values(notify, "lisp.nonce") == ["0x01dfdfdfddccbbaa"]
    assert verify(cases[3][1], "k3")

    for name, inner_source, inner_destination, source_port in (
            ("ecm4", "10.1.3.20", "10.1.1.20", "36485"), ("ecm6", "2001:db8:3::20", "2001:db8:1::1", "4342")):
        ecm = packets[name]
        assert _values(ecm, "lisp.type") == ["8", "1"], name
        assert _values(ecm, "lisp.ecm.flags.sec") == ["0"] and _values(ecm, "lisp.ecm.flags.ddt") == ["0"]
        field = "ip" if name == "ecm4" else "ipv6"
        assert _values(ecm, field + ".src")[-1] == inner_source and _values(ecm, field + ".dst")[-1] == inner_destination
        assert _values(ecm, "udp.srcport") == ["4342", source_port] and _values(ecm, "udp.dstport") == ["4342"] * 2
        assert _values(ecm, "udp.checksum.status") == ["1", "1"], name   # outer and inner checksums are good
        assert _values(ecm, "lisp.nonce") == ["0x0011223344556677"]
        assert _values(ecm, "lisp.lcaf.iid.ipv4") == ["10.1.3.20", "10.1.1.20", "10.1.3.0"]
