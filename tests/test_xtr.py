"""The xTR's pure logic (lisp/registrar.py, lisp/resolver.py) against a
fake mapping-system peer on real UDP sockets (lab/fakems.py), on an
injected clock."""
from __future__ import annotations

import ipaddress
import socket
import struct
import threading
from types import SimpleNamespace

import pytest

from lab.fakems import FakeMappingSystem, serve, static_record
from lisp_controller.config import ConfigError, parse_config
from lisp_controller.lisp import (ENCAP_VXLAN_GPE, EidRecord, EncapsulationFormatAddress,
                                  InstanceIdAddress, LocatorRecord, MapNotify, MapRegister, MapReply,
                                  decode, sign, unwrap_ecm)
from lisp_controller.lisp.config import MapServerPeer, XtrSettings
from lisp_controller.lisp.auth import AuthKey
from lisp_controller.lisp.registrar import MAX_MESSAGE, Registrar
from lisp_controller.lisp.resolver import Held, Resolution, Resolver
from lisp_controller.model import Bridge, Endpoint, MapCache, Mapping, as_prefix, parse_prefix, prefix_key
from lisp_controller.pipeline.compiler import mapping_flow_mod

V4 = ipaddress.IPv4Address
KEY = AuthKey(1, b"xtr-test-key")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Nonces:
    """Distinct, predictable nonces."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, size: int) -> bytes:
        self.n += 1
        return self.n.to_bytes(size, "big")


class Peer:
    """The fake mapping system on 127.0.0.1, and our socket to it."""

    def __init__(self, ms: FakeMappingSystem):
        self.ms = ms
        self.server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.server.bind(("127.0.0.1", 0))
        self.address = V4(self.server.getsockname()[0])
        self.port = self.server.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=serve, args=(self.server, ms, self.stop), daemon=True)
        self.thread.start()
        self.client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.client.bind(("127.0.0.1", 0))
        self.client.settimeout(2.0)
        self.client_port = self.client.getsockname()[1]

    def exchange(self, datagrams, expect: int | None = None) -> list[bytes]:
        """Send our datagrams to the peer; the answers that come back."""
        for d in datagrams:
            self.client.sendto(d.data, (str(self.address), self.port))
        answers = []
        want = len(datagrams) if expect is None else expect
        while len(answers) < want:
            try:
                answers.append(self.client.recv(65535))
            except socket.timeout:
                break
        return answers

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.server.close()
        self.client.close()


@pytest.fixture
def peer():
    p = Peer(FakeMappingSystem({1: KEY.secret}))
    try:
        yield p
    finally:
        p.close()


def bridge(label: str, rloc: str, eids: dict[str, list[str]], iid: int = 1000, profile: str = "lisp-gpe") -> Bridge:
    eps = tuple(Endpoint(port, f"52:54:00:00:00:{i:02x}", iid, tuple(ipaddress.ip_address(a) for a in addrs))
                for i, (port, addrs) in enumerate(eids.items(), 1))
    return Bridge(label, None, label, ipaddress.ip_address(rloc), "lisp0", profile, "02:00:00:00:00:01", eps)


def settings(ms_address="127.0.0.1", **kw) -> XtrSettings:
    return XtrSettings(map_servers=(MapServerPeer(V4(ms_address), KEY),), control_address=V4("127.0.0.1"), **kw)


# ---------------------------------------------------------------- config

def test_lisp_section_parses_and_defaults_the_miss_action():
    config = parse_config({"controller": {"listen": "172.31.255.1"}, "bridge": [{"name": "b", "rloc": "192.0.2.1"}],
                           "lisp": {"map_servers": [{"address": "172.31.255.50", "key_id": 3, "key": "pw"}],
                                    "map_resolvers": ["172.31.255.50", "172.31.255.51"]}})
    lisp = config.xtr
    assert [str(m.address) for m in lisp.map_servers] == ["172.31.255.50"]
    assert lisp.map_servers[0].key.key_id == 3 and "pw" not in repr(lisp.map_servers[0])
    assert [str(a) for a in lisp.map_resolvers] == ["172.31.255.50", "172.31.255.51"]
    assert str(lisp.control_address) == "172.31.255.1"  # the OpenFlow listen address
    assert (lisp.register_interval, lisp.proxy_reply, lisp.want_map_notify, lisp.advertise_gpe) == (60.0, True, True, True)
    assert config.overlay.miss_action == "send-map-request"
    assert parse_config({"bridge": [{"name": "b", "rloc": "192.0.2.1"}]}).overlay.miss_action == "drop"
    told = parse_config({"controller": {"listen": "172.31.255.1", "miss_action": "drop"}, "bridge": [{"name": "b", "rloc": "192.0.2.1"}],
                         "lisp": {"map_resolvers": ["172.31.255.50"]}})
    assert told.overlay.miss_action == "drop"


def test_lisp_section_problems_are_named():
    with pytest.raises(ConfigError) as e:
        parse_config({"lisp": {"map_servers": [{"address": "10.0.0.1", "key": ""}, "x"],
                               "map_resolvers": ["nope"], "register_interval": 0, "proxy_reply": "yes",
                               "colour": 1}})
    text = "\n".join(e.value.problems)
    for needle in ("lisp.colour: unknown key", "lisp.map_servers[0].key_id: is required",
                   "lisp.map_resolvers[0]", "lisp.register_interval", "lisp.proxy_reply"):
        assert needle in text, text
    with pytest.raises(ConfigError, match="lisp.control_address: is required"):
        parse_config({"bridge": [{"name": "b", "rloc": "192.0.2.1"}], "lisp": {"map_resolvers": ["10.0.0.1"]}})


# ---------------------------------------------------------------- registration

def test_registers_every_local_eid_with_its_bridges_rloc_and_the_notify_confirms(peer):
    clock = Clock()
    reg = Registrar(settings(), clock, Nonces())
    bridges = [bridge("hv1", "192.0.2.1", {"vnet0": ["10.1.1.20", "2001:db8::20"]}),
               bridge("hv2", "192.0.2.2", {"vnet1": ["10.1.1.30"]}, profile="gre-l3")]
    sent = reg.update(bridges)
    assert len(sent) == 1 and {s["state"] for s in reg.status()} == {"registering"}
    register = decode(sent[0].data)
    assert isinstance(register, MapRegister) and register.proxy_reply and register.want_map_notify
    by_eid = {(r.eid.instance_id, str(r.eid.address)): r for r in register.records}
    hv1 = by_eid[(1000, "10.1.1.20")].locators[0]
    assert hv1.address == EncapsulationFormatAddress(ENCAP_VXLAN_GPE, V4("192.0.2.1")) and hv1.local
    assert by_eid[(1000, "2001:db8::20")].mask_len == 128
    assert by_eid[(1000, "10.1.1.30")].locators[0].address == V4("192.0.2.2")  # gre-l3: not LISP-GPE
    answers = peer.exchange(sent)
    assert [reg.on_notify(a, decode(a)) for a in answers] == ["accepted"]
    assert {s["state"] for s in reg.status()} == {"registered"}
    assert sorted(peer.ms.state()["registered"]) == ["1000:10.1.1.20/32", "1000:10.1.1.30/32",
                                                     "1000:2001:db8::20/128"]
    # The same Map-Notify again is a replay: nothing changes, it is counted.
    assert reg.on_notify(answers[0], decode(answers[0])) == "unknown-nonce"
    assert reg.counts["notify_unknown_nonce"] == 1


def test_gpe_advertisement_can_be_turned_off():
    reg = Registrar(settings(advertise_gpe=False), Clock(), Nonces())
    (sent,) = reg.update([bridge("hv1", "192.0.2.1", {"vnet0": ["10.1.1.20"]})])
    assert decode(sent.data).records[0].locators[0].address == V4("192.0.2.1")


def test_many_eids_split_into_messages_of_at_most_1400_bytes(peer):
    reg = Registrar(settings(), Clock(), Nonces())
    eids = {f"p{i}": [f"10.{i // 250}.{i % 250}.{j}" for j in range(1, 5)] for i in range(300)}
    sent = reg.update([bridge("hv1", "192.0.2.1", eids)])
    assert len(sent) > 1 and max(len(d.data) for d in sent) <= MAX_MESSAGE
    assert sum(len(decode(d.data).records) for d in sent) == 1200
    answers = peer.exchange(sent)
    assert [reg.on_notify(a, decode(a)) for a in answers] == ["accepted"] * len(sent)
    assert len(peer.ms.registered) == 1200 and {s["state"] for s in reg.status()} == {"registered"}


def test_added_moved_and_removed_eids_go_out_at_once_and_removed_ones_are_withdrawn(peer):
    clock = Clock()
    reg = Registrar(settings(), clock, Nonces())
    one = bridge("hv1", "192.0.2.1", {"vnet0": ["10.1.1.20"], "vnet1": ["10.1.1.21"]})
    for a in peer.exchange(reg.update([one])):
        reg.on_notify(a, decode(a))
    moved = [bridge("hv1", "192.0.2.1", {"vnet0": ["10.1.1.20"]}),
             bridge("hv2", "192.0.2.2", {"vnet1": ["10.1.1.21"], "vnet2": ["10.1.1.22"]})]
    sent = reg.update(moved)
    messages = [decode(d.data) for d in sent]
    assert {str(r.eid.address) for m in messages for r in m.records} == {"10.1.1.21", "10.1.1.22"}
    assert all(r.locators[0].address.address == V4("192.0.2.2") for m in messages for r in m.records)
    for a in peer.exchange(sent):
        reg.on_notify(a, decode(a))
    assert peer.ms.registered[(1000, ipaddress.ip_network("10.1.1.21/32"))].locators[0].address.address \
        == V4("192.0.2.2")
    sent = reg.update([bridge("hv2", "192.0.2.2", {"vnet2": ["10.1.1.22"]})])
    (withdraw,) = [decode(d.data) for d in sent]
    assert {(str(r.eid.address), r.ttl, len(r.locators)) for r in withdraw.records} == \
        {("10.1.1.20", 0, 0), ("10.1.1.21", 0, 0)}
    assert {s["state"] for s in reg.status() if s["eid"] != "10.1.1.22/32"} == {"withdrawing"}
    for a in peer.exchange(sent):
        assert reg.on_notify(a, decode(a)) == "accepted"
    assert [s["eid"] for s in reg.status()] == ["10.1.1.22/32"]
    assert peer.ms.state()["registered"] == ["1000:10.1.1.22/32"]


def test_a_missing_notify_is_retried_with_backoff_and_shows_as_failing():
    clock = Clock()
    reg = Registrar(settings(register_interval=60), clock, Nonces())
    reg.update([bridge("hv1", "192.0.2.1", {"vnet0": ["10.1.1.20"]})])
    reg.poll()  # the first periodic refresh is due at once
    sends = []
    for _ in range(8):
        clock.now = reg.next_due()
        out = reg.poll()
        sends.append((clock.now, len(out)))
    # Sent at 1000; retried after 1, 2, 4, 8 and 16 s; the periodic
    # registration at 1060 starts over.
    assert [t for t, _ in sends][:7] == [1001.0, 1003.0, 1007.0, 1015.0, 1031.0, 1060.0, 1061.0], sends
    assert all(n == 1 for _, n in sends)
    (status,) = reg.status()
    assert status["state"] == "failing" and "no Map-Notify" in status["error"] and status["attempts"] >= 5


def test_a_notify_with_a_wrong_key_or_forged_nonce_changes_nothing(peer):
    reg = Registrar(settings(), Clock(), Nonces())
    (sent,) = reg.update([bridge("hv1", "192.0.2.1", {"vnet0": ["10.1.1.20"]})])
    message = decode(sent.data)
    forged = sign(MapNotify(message.nonce, message.records), AuthKey(1, b"not-the-key"))
    assert reg.on_notify(forged, decode(forged)) == "bad-auth"
    stranger = sign(MapNotify(b"\x99" * 8, message.records), KEY)
    assert reg.on_notify(stranger, decode(stranger)) == "unknown-nonce"
    assert {s["state"] for s in reg.status()} == {"registering"}


def test_without_want_map_notify_a_sent_registration_counts_as_registered():
    reg = Registrar(settings(want_map_notify=False, proxy_reply=False), Clock(), Nonces())
    (sent,) = reg.update([bridge("hv1", "192.0.2.1", {"vnet0": ["10.1.1.20"]})])
    message = decode(sent.data)
    assert not message.want_map_notify and not message.proxy_reply
    assert {s["state"] for s in reg.status()} == {"registered"} and reg.next_due() == 1060.0  # the next refresh


def test_every_map_server_gets_every_registration():
    two = XtrSettings(map_servers=(MapServerPeer(V4("192.0.2.50"), KEY), MapServerPeer(V4("192.0.2.51"), AuthKey(3, b"k3"))),
                      control_address=V4("192.0.2.9"))
    reg = Registrar(two, Clock(), Nonces())
    sent = reg.update([bridge("hv1", "192.0.2.1", {"vnet0": ["10.1.1.20"]})])
    assert sorted(str(d.destination) for d in sent) == ["192.0.2.50", "192.0.2.51"]
    assert sorted(decode(d.data).key_id for d in sent) == [1, 3]
    assert len(reg.status()) == 2


# ---------------------------------------------------------------- resolution

def resolver_settings(*resolvers: str) -> XtrSettings:
    return XtrSettings(map_resolvers=tuple(V4(r) for r in resolvers), control_address=V4("127.0.0.1"))


def test_a_miss_is_asked_once_per_eid_as_an_ecm_and_the_reply_becomes_a_learned_mapping(peer):
    peer.ms.static[(1000, ipaddress.ip_network("10.9.0.0/16"))] = static_record(1000, "10.9.0.0/16", ["192.0.2.9"], ttl=5)
    clock = Clock()
    res = Resolver(resolver_settings("127.0.0.1"), clock, Nonces(), port=peer.client_port)
    held = Held(1, 7, b"packet")
    (request,) = res.miss(1000, V4("10.1.1.20"), V4("10.9.1.1"), held)
    assert res.miss(1000, V4("10.1.1.20"), V4("10.9.1.1"), Held(1, 7, b"second")) == []  # joined, not asked again
    ecm = unwrap_ecm(request.data)
    assert (ecm.inner_source, ecm.inner_destination) == (V4("10.1.1.20"), V4("10.9.1.1"))
    inner = ecm.message
    assert inner.source_eid == InstanceIdAddress(1000, V4("10.1.1.20")) and inner.itr_rlocs == (V4("127.0.0.1"),)
    assert inner.records[0].eid == InstanceIdAddress(1000, V4("10.9.1.1")) and inner.records[0].mask_len == 32
    (answer,) = peer.exchange([request._replace(port=peer.port)])
    result = res.on_reply(decode(answer))
    assert isinstance(result, Resolution)
    (m,) = result.mappings
    assert (m.iid, str(m.eid), m.source, m.ttl, m.action) == (1000, "10.9.0.0/16", "map-resolver", 5, "no-action")
    assert [str(r.address) for r in m.rlocs] == ["192.0.2.9"]
    assert [h.data for h in result.held] == [b"packet", b"second"]
    assert res.on_reply(decode(answer)) == "unknown-nonce"  # answered already: a replay is dropped
    assert res.pending() == 0


def test_a_map_request_made_from_its_shapes_template_is_the_codecs_byte_for_byte():
    """map_request fills the nonce, the EID and the checksums into bytes the
    codec made once per shape (lisp/resolver.py): for any IID, EID prefix
    (IPv4, IPv6, every length), source, ITR-RLOC, port and nonce, the
    result is what the codec makes, the first time and after."""
    import random
    from lisp_controller.lisp.resolver import encoded_map_request, map_request
    from lisp_controller.model import Prefix
    rng = random.Random(9301)
    for _ in range(2000):
        version = rng.choice((4, 6))
        bits = 32 if version == 4 else 128
        length = rng.randrange(bits + 1)
        eid = Prefix(version, rng.getrandbits(bits) >> (bits - length) << (bits - length) if length else 0, length)
        source = ipaddress.ip_address(rng.getrandbits(32)) if version == 4 else ipaddress.IPv6Address(rng.getrandbits(128))
        itr = rng.choice((ipaddress.IPv4Address(rng.getrandbits(32)), ipaddress.IPv6Address(rng.getrandbits(128))))
        iid, port = rng.randrange(1 << 24), rng.randrange(1, 1 << 16)
        for nonce in (rng.randbytes(8), rng.randbytes(8)):
            assert map_request(nonce, iid, eid, source, itr, port) == \
                encoded_map_request(nonce, iid, eid, source, itr, port), (eid, source, itr, iid, port)


def test_a_negative_reply_becomes_a_negative_entry_with_its_action_and_ttl(peer):
    res = Resolver(resolver_settings("127.0.0.1"), Clock(), Nonces(), port=peer.client_port)
    (request,) = res.miss(1000, V4("10.1.1.20"), V4("10.66.0.1"), Held(1, 7, b"p"))
    (answer,) = peer.exchange([request._replace(port=peer.port)])
    result = res.on_reply(decode(answer))
    (m,) = result.mappings
    assert (str(m.eid), m.rlocs, m.action, m.ttl) == ("10.66.0.1/32", (), "drop", 1)


def test_retries_after_1_2_and_4_seconds_fail_over_and_give_up():
    clock = Clock()
    res = Resolver(resolver_settings("192.0.2.50", "192.0.2.51"), clock, Nonces())
    (first,) = res.miss(1000, V4("10.1.1.20"), V4("10.9.1.1"), Held(1, 7, b"p"))
    sends = [(0.0, str(first.destination))]
    failed = []
    start = clock.now
    while not failed:
        clock.now = res.next_due()
        out, failed = res.poll()
        sends += [(clock.now - start, str(d.destination)) for d in out]
    assert sends == [(0.0, "192.0.2.50"), (1.0, "192.0.2.51"), (3.0, "192.0.2.50"), (7.0, "192.0.2.51")]
    assert failed == [(1000, as_prefix(V4("10.9.1.1")))] and res.pending() == 0
    assert res.counts["requests_failed"] == 1


def test_a_resolver_that_let_a_request_time_out_is_no_longer_asked_first():
    clock = Clock()
    res = Resolver(resolver_settings("192.0.2.50", "192.0.2.51"), clock, Nonces())
    res.miss(1000, V4("10.1.1.20"), V4("10.9.1.1"))
    clock.now += 1
    (retry,), _ = res.poll()
    assert str(retry.destination) == "192.0.2.51"
    (nxt,) = res.miss(1000, V4("10.1.1.20"), V4("10.9.2.2"))
    assert str(nxt.destination) == "192.0.2.51"


def test_a_reply_to_an_earlier_send_still_counts_and_makes_its_resolver_preferred():
    clock = Clock()
    res = Resolver(resolver_settings("192.0.2.50", "192.0.2.51"), clock, Nonces())
    (first,) = res.miss(1000, V4("10.1.1.20"), V4("10.9.1.1"))
    clock.now += 1
    (second,), _ = res.poll()
    nonce = unwrap_ecm(second.data).message.nonce
    reply = MapReply(nonce, (static_record(1000, "10.9.0.0/16", ["192.0.2.9"]),))
    assert isinstance(res.on_reply(reply), Resolution)
    assert res.preferred == 1


@pytest.mark.parametrize("record, why", [
    (static_record(2000, "10.9.0.0/16", ["192.0.2.9"]), "another IID"),
    (static_record(1000, "10.8.0.0/16", ["192.0.2.9"]), "does not cover the EID asked"),
    (EidRecord(V4("10.9.0.0"), 16, (LocatorRecord(V4("192.0.2.9")),)), "no IID"),
    (EidRecord(InstanceIdAddress(1000, V4("10.9.0.1")), 16, (LocatorRecord(V4("192.0.2.9")),)), "host bits"),
    (EidRecord(InstanceIdAddress(1000, V4("10.9.0.0")), 40, (LocatorRecord(V4("192.0.2.9")),)), "mask too long"),
    (EidRecord(InstanceIdAddress(1000, V4("10.9.0.0")), 16, (), action=7), "unknown action"),
])
def test_bad_records_are_dropped_and_counted_never_installed(record, why):
    res = Resolver(resolver_settings("192.0.2.50"), Clock(), Nonces())
    (request,) = res.miss(1000, V4("10.1.1.20"), V4("10.9.1.1"))
    nonce = unwrap_ecm(request.data).message.nonce
    assert res.on_reply(MapReply(nonce, (record,))) == "bad-record", why
    assert res.counts["replies_bad_record"] == 1 and res.pending() == 1


def test_used_entries_are_refreshed_before_expiry_and_idle_ones_left_to_expire():
    clock = Clock()
    res = Resolver(resolver_settings("192.0.2.50"), clock, Nonces())
    keys = []
    for dst in ("10.9.1.1", "10.8.1.1"):
        (request,) = res.miss(1000, V4("10.1.1.20"), V4(dst))
        nonce = unwrap_ecm(request.data).message.nonce
        result = res.on_reply(MapReply(nonce, (static_record(1000, dst.rsplit(".", 2)[0] + ".0.0/16",
                                                             ["192.0.2.9"], ttl=1),)))
        keys.append(result.mappings[0].key)
    used, idle = keys
    counters = {used: 5, idle: 5}
    clock.now += 40  # 60 s TTL: the window opens at 48 s, the decision falls at 54 s
    assert res.refresh_due(counters.get) == []
    clock.now += 9
    assert res.refresh_due(counters.get) == []  # baselines taken
    counters[used] = 9
    clock.now += 6
    (refresh,) = res.refresh_due(counters.get)
    record = unwrap_ecm(refresh.data).message.records[0]
    assert (str(record.eid.address), record.mask_len) == ("10.9.0.0", 16)
    assert res.refresh_due(counters.get) == [] and res.pending() == 1


def test_a_counter_not_read_yet_is_no_traffic():
    """The switches' counters come from a cache read in the background: a
    baseline never read is not zero, or the first reading would look like
    traffic and keep an idle entry alive."""
    clock = Clock()
    res = Resolver(resolver_settings("192.0.2.50"), clock, Nonces())
    (request,) = res.miss(1000, V4("10.1.1.20"), V4("10.9.1.1"))
    nonce = unwrap_ecm(request.data).message.nonce
    (m,) = res.on_reply(MapReply(nonce, (static_record(1000, "10.9.0.0/16", ["192.0.2.9"], ttl=1),))).mappings
    counters = {}
    clock.now += 49
    assert res.refresh_due(counters.get) == []  # window open, counter unknown
    counters[m.key] = 7  # first read: what the flow carried so far
    clock.now += 1
    assert res.refresh_due(counters.get) == []  # the baseline, now
    clock.now += 5
    assert res.refresh_due(counters.get) == [] and res.pending() == 0  # no traffic since: left to expire


def test_an_entry_answered_again_follows_its_new_ttl():
    """A prefix answered again before its refresh window (another miss
    asked about it) runs on its new TTL: its window opens two leads before
    the new expiry, not the old one."""
    clock = Clock()
    res = Resolver(resolver_settings("192.0.2.50"), clock, Nonces())

    def learn() -> Mapping:
        (request,) = res.miss(1000, V4("10.1.1.20"), V4("10.9.1.1"))
        nonce = unwrap_ecm(request.data).message.nonce
        return res.on_reply(MapReply(nonce, (static_record(1000, "10.9.0.0/16", ["192.0.2.9"], ttl=1),))).mappings[0]

    m = learn()
    clock.now += 30
    learn()  # expires 60 s from now, no longer 30
    asked = []
    counters = lambda key: asked.append(key) or 1
    clock.now += 18  # the old window would open now
    assert res.refresh_due(counters) == [] and asked == []
    clock.now += 30  # the new one does
    assert res.refresh_due(counters) == [] and asked == [m.key]
    clock.now += 6
    assert res.refresh_due(counters) == [] and res.pending() == 0  # no traffic: left to expire
    clock.now += 6
    assert res.refresh_due(counters) == [] and not res._learned


def test_learned_state_is_shared_and_out_of_the_collectors_sight():
    """Each learned prefix would otherwise keep seven tracked objects (its
    refresh record, the packet's source address, its own RLOC set): at
    40,000 prefixes, full collections of 150 ms that hold the hub
    (docs/performance.rst). Prefixes with the same RLOC share one set; the
    refresh record is untracked, its source address one per source."""
    import gc
    clock = Clock()
    res = Resolver(resolver_settings("192.0.2.50"), clock, Nonces())
    learned = []
    for dst in ("10.9.1.1", "10.8.1.1"):
        (request,) = res.miss(1000, V4("10.1.1.20"), V4(dst))
        nonce = unwrap_ecm(request.data).message.nonce
        (m,) = res.on_reply(MapReply(nonce, (static_record(1000, dst.rsplit(".", 2)[0] + ".0.0/16",
                                                                ["192.0.2.9"], ttl=1),))).mappings
        learned.append(m)
    one, two = learned
    assert one.rlocs is two.rlocs
    records = [res._learned[m.key] for m in learned]
    assert not any(gc.is_tracked(r) for r in records)
    assert records[0].source is records[1].source
    # The keys and the refresh schedule: tuples holding a Prefix, which
    # Python would keep tracked for good.
    assert len(res._looks) == 2 and not any(gc.is_tracked(x) for look in res._looks for x in (look, look[1]))
    assert not any(gc.is_tracked(key) for key in res._learned)


# ---------------------------------------------------------------- tshark decodes what we emit

def test_tshark_decodes_every_message_the_xtr_emits_with_our_values(tmp_path):
    """What the registrar and the resolver put on the wire, read back by
    tshark's lisp dissector: the same field values, nothing malformed."""
    from tests.test_lisp_codec import ERROR_SEVERITY, UNDISSECTED_LCAF, _dissect, _values
    reg = Registrar(settings(), Clock(), Nonces())
    (register,) = reg.update([bridge("hv1", "192.0.2.1", {"vnet0": ["10.1.1.20", "2001:db8::20"]}),
                              bridge("hv2", "192.0.2.2", {"vnet1": ["10.1.1.30"]}, profile="gre-l3")])
    (withdraw,) = reg.update([bridge("hv1", "192.0.2.1", {"vnet0": ["10.1.1.20", "2001:db8::20"]})])
    res = Resolver(resolver_settings("192.0.2.50"), Clock(), Nonces())
    (request,) = res.miss(1000, V4("10.1.1.20"), V4("10.9.1.1"))
    (request6,) = res.miss(1000, ipaddress.IPv6Address("2001:db8::20"), ipaddress.IPv6Address("2001:db8:9::1"))
    packets = _dissect([register.data, withdraw.data, request.data, request6.data], tmp_path)
    for fields in packets:
        assert not [f for f, _ in fields if f and f.startswith("_ws.malformed")], fields
        assert not [s for f, s in fields if f == "_ws.expert.severity" and int(s) >= ERROR_SEVERITY]
        assert set(_values(fields, "_ws.expert.message")) <= {UNDISSECTED_LCAF}
    reg_fields, withdraw_fields, request_fields, request6_fields = packets

    sent = decode(register.data)
    assert _values(reg_fields, "lisp.type") == ["3"]
    assert [_values(reg_fields, "lisp.mreg.flags." + f) for f in ("pmr", "sec", "xtrid", "rtr", "wmn")] \
        == [["1"], ["0"], ["0"], ["0"], ["1"]]
    assert _values(reg_fields, "lisp.nonce") == ["0x" + sent.nonce.hex()]
    assert _values(reg_fields, "lisp.keyid") == ["0x0102"] and _values(reg_fields, "lisp.authlen") == ["32"]
    assert _values(reg_fields, "lisp.auth")[0].replace(":", "") == sent.auth_data.hex()
    assert _values(reg_fields, "lisp.records") == ["3"]
    assert _values(reg_fields, "lisp.mapping.ttl") == [str(reg.ttl)] * 3
    assert _values(reg_fields, "lisp.mapping.auth") == ["1"] * 3
    assert _values(reg_fields, "lisp.mapping.loccnt") == ["1"] * 3
    assert _values(reg_fields, "lisp.lcaf.iid") == ["1000"] * 3
    assert sorted(_values(reg_fields, "lisp.lcaf.iid.ipv4")) == ["10.1.1.20", "10.1.1.30"]
    assert _values(reg_fields, "lisp.lcaf.iid.ipv6") == ["2001:db8::20"]
    assert sorted(_values(reg_fields, "lisp.mapping.eid.masklen")) == ["128", "32", "32"]
    assert _values(reg_fields, "lisp.loc.priority") == ["1"] * 3 and _values(reg_fields, "lisp.loc.weight") == ["100"] * 3
    assert _values(reg_fields, "lisp.loc.flags.local") == ["1"] * 3 and _values(reg_fields, "lisp.loc.flags.reach") == ["1"] * 3
    # tshark 4.0 frames but does not dissect the Encapsulation Format LCAF (type 16) of the two
    # lisp-gpe locators; the gre-l3 bridge's locator is a plain IPv4 address.
    assert _values(reg_fields, "lisp.lcaf.type").count("16") == 2
    assert _values(reg_fields, "lisp.loc.locator") == ["192.0.2.2"]

    assert _values(withdraw_fields, "lisp.mapping.ttl") == ["0"]
    assert _values(withdraw_fields, "lisp.mapping.loccnt") == ["0"]
    assert _values(withdraw_fields, "lisp.lcaf.iid.ipv4") == ["10.1.1.30"]

    for fields, data, source, destination, ip in (
            (request_fields, request.data, "10.1.1.20", "10.9.1.1", "ip"),
            (request6_fields, request6.data, "2001:db8::20", "2001:db8:9::1", "ipv6")):
        inner = unwrap_ecm(data).message
        assert _values(fields, "lisp.type") == ["8", "1"]
        assert _values(fields, ip + ".src")[-1] == source and _values(fields, ip + ".dst")[-1] == destination
        assert _values(fields, "udp.dstport") == ["4342", "4342"] and _values(fields, "udp.checksum.status")[-1] == "1"
        assert _values(fields, "lisp.nonce") == ["0x" + inner.nonce.hex()]
        assert _values(fields, "lisp.irc") == ["0"] and _values(fields, "lisp.records") == ["1"]
        assert _values(fields, "lisp.mreq.itr_rloc_ipv4") == ["127.0.0.1"]
        assert _values(fields, "lisp.lcaf.iid") == ["1000", "1000"]  # source EID and the record
        assert _values(fields, "lisp.lcaf.iid." + ("ipv4" if ip == "ip" else "ipv6")) == [source, destination]
        assert _values(fields, "lisp.mreq.record.prefix.length") == ["32" if ip == "ip" else "128"]


def test_a_new_rloc_is_probed_once_before_the_held_packets_go(monkeypatch):
    """OVS drops a packet to an RLOC whose next hop it has not resolved: the
    xTR makes it resolve it first, once per bridge and RLOC a minute."""
    from types import SimpleNamespace
    from lisp_controller.lisp import installer as installer_module
    from lisp_controller.lisp import xtr as xtr_module
    from lisp_controller.openflow import encode
    sent = []
    hv1 = bridge("hv1", "192.0.2.1", {"vnet0": ["10.1.1.20"]})
    session = SimpleNamespace(label="hv1", switch=SimpleNamespace(send=sent.append),
                              status=SimpleNamespace(bridge=hv1, ports={"lisp0": 3, "vnet0": 1}))
    app = SimpleNamespace(sessions={1: session}, state=SimpleNamespace(clock=Clock()))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        x = xtr_module.Xtr(app, resolver_settings("127.0.0.1"), sock)
        remote = Mapping(1000, parse_prefix("10.9.0.0/16"), (xtr_module_rloc("192.0.2.9"),), ttl=5,
                         source="map-resolver")
        local = Mapping(1000, parse_prefix("10.8.0.0/16"), (xtr_module_rloc("192.0.2.1"),), ttl=5,
                        source="map-resolver")
        held = Held(1, 1, b"frame")
        x.installer.probe(Resolution((1000, remote.eid), [remote, local], [held]))
        x.installer.probe(Resolution((1000, remote.eid), [remote], [held]))  # within the minute: not again
    finally:
        sock.close()
    from lisp_controller.pipeline.actions import output, set_field
    assert sent == [encode.packet_out((set_field("tun_ipv4_dst", V4("192.0.2.9")),
                                       set_field("tunnel_id", installer_module.PROBE_IID), output(3)),
                                      installer_module.probe_frame())]
    frame = installer_module.probe_frame()
    assert frame[12:14] == b"\x08\x00" and frame[14 + 8] == 0  # IPv4, TTL 0


def xtr_module_rloc(address: str):
    from lisp_controller.model import Rloc
    return Rloc(V4(address))


def test_held_packets_are_bounded_per_request_and_in_all(monkeypatch):
    from lisp_controller.lisp import resolver as resolver_module
    monkeypatch.setattr(resolver_module, "MAX_HELD_TOTAL", 10)
    res = Resolver(resolver_settings("192.0.2.50"), Clock(), Nonces())
    for n in range(12):  # one EID: at most MAX_HELD held
        res.miss(1000, V4("10.1.1.20"), V4("10.9.0.1"), Held(1, 7, bytes([n])))
    for n in range(5):  # more EIDs: the total stops at 10
        res.miss(1000, V4("10.1.1.20"), V4(f"10.9.1.{n}"), Held(1, 7, b"x"))
    assert res.counts["packets_not_held"] == 12 - resolver_module.MAX_HELD + 3
    (request,) = [r for r in res._requests.values() if str(r.eid) == "10.9.0.1/32"]
    nonce = request.nonces[0]
    result = res.on_reply(MapReply(nonce, (static_record(1000, "10.9.0.0/24", ["192.0.2.9"]),)))
    assert [h.data for h in result.held] == [bytes([n]) for n in range(resolver_module.MAX_HELD)]
    res.miss(1000, V4("10.1.1.20"), V4("10.9.2.1"), Held(1, 7, b"y"))  # room again
    assert res.counts["packets_not_held"] == 12 - resolver_module.MAX_HELD + 3


class WireDatapath:
    """What a real Switch (openflow/switch.py) writes, message by message.
    It answers every barrier at once and refuses the flow-mods whose
    cookies are in `refuse` just before, as a switch's error precedes the
    reply to a later barrier."""

    HEADER = struct.Struct("!BBHI")

    def __init__(self, refuse: set[int] = frozenset()):
        self.switch = None
        self.refuse = refuse
        self.writes: list[list[tuple[int, bytes]]] = []  # (OpenFlow type, message) per write

    def send(self, buf: bytes) -> bool:
        messages, offset = [], 0
        while offset < len(buf):
            _, mtype, length, xid = self.HEADER.unpack_from(buf, offset)
            msg = buf[offset:offset + length]
            messages.append((mtype, msg))
            if mtype == 14 and int.from_bytes(msg[8:16], "big") in self.refuse:  # OFPT_FLOW_MOD
                self.switch.on_error(SimpleNamespace(xid=xid, type=5, code=1))  # OFPFMFC_TABLE_FULL
            elif mtype == 20:  # OFPT_BARRIER_REQUEST
                self.switch.on_reply(SimpleNamespace(xid=xid, flags=0))
            offset += length
        self.writes.append(messages)
        return True


def _xtr_on_a_wire(monkeypatch, refuse: set[int] = frozenset(), owners: dict | None = None):
    """An Xtr whose one bridge (datapath 1) is a real Switch on a
    WireDatapath; commits are recorded, greenthreads run when the test says."""
    from lisp_controller.lisp import installer as installer_module
    from lisp_controller.lisp import xtr as xtr_module
    from lisp_controller.openflow.switch import Switch
    dp = WireDatapath(refuse)
    switch = dp.switch = Switch(dp, "hv1", timeout=1)
    hv1 = bridge("hv1", "192.0.2.1", {"vnet0": ["10.1.1.20"]})
    session = SimpleNamespace(label="hv1", switch=switch, writes=True, noted=[],
                              status=SimpleNamespace(bridge=hv1, ports={"lisp0": 3, "vnet0": 1}, datapath_id=1))
    session.note_installed = session.noted.extend
    commits: list = []
    app = SimpleNamespace(sessions={1: session}, state=SimpleNamespace(clock=Clock(), owner=(owners or {}).get,
                                                                       cache=MapCache()),
                          apply_change=lambda change, wait=None: commits.append(change) or [])
    spawned: list = []
    monkeypatch.setattr(installer_module.hub, "spawn", lambda f, *args: spawned.append((f, args)))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    x = xtr_module.Xtr(app, resolver_settings("127.0.0.1"), sock)
    return x, dp, commits, spawned, sock


def _learned(eid: str, *rlocs: str) -> Mapping:
    from lisp_controller.model import Rloc
    return Mapping(1000, parse_prefix(eid), tuple(Rloc(V4(r)) for r in rlocs), ttl=5, source="map-resolver")


def _frame_to(destination: str) -> bytes:
    return bytes(12) + b"\x08\x00" + bytes.fromhex("4500001c0000000040110000") + \
        V4("10.1.1.20").packed + V4(destination).packed + bytes(8)


def _run(spawned: list) -> None:
    while spawned:
        f, args = spawned.pop(0)
        f(*args)


def test_a_learned_flow_goes_out_with_its_packets_right_behind_it_before_its_commit(monkeypatch):
    """A resolved mapping that needs no group and whose key nobody else
    holds is sent to the bridge at once: its flow-mod, a barrier and its
    held packets in one write, without waiting for the barrier (the switch
    takes them in order: tests/test_bundle_ovs.py) nor for the commit,
    which comes after. Written before the installer returns: a packet-out
    for the same EID sent after follows the flow on the connection. A mapping with an RLOC set (its group is the
    commit's to make) and one whose key the API holds are committed first,
    and their packets follow."""
    from lisp_controller.openflow import encode
    one, group, owned = (_learned("10.9.0.0/24", "192.0.2.1"),
                         _learned("10.8.0.0/24", "192.0.2.1", "192.0.2.2"), _learned("10.7.0.0/24", "192.0.2.1"))
    x, dp, commits, spawned, sock = _xtr_on_a_wire(monkeypatch, owners={owned.key: "api"})
    session = x.app.sessions[1]
    try:
        batch = [Resolution(m.key, [m], [Held(1, 1, bytes([n]))]) for n, m in enumerate((one, group, owned))]
        x.installer.install(batch)
        # Written before the installer returns, without waiting for the
        # switch nor for the commit; the barrier is waited for on the side.
        assert len(dp.writes) == 1 and commits == [] and session.noted == []
        _run(spawned)
        flow = mapping_flow_mod(one, prefix_key(1000, one.eid))[1]
        out = lambda n: encode.packet_out_to_table(1, bytes([n]))
        (write,) = dp.writes
        assert [t for t, _ in write] == [14, 20, 13]   # flow-mod, barrier, packet-out: one write
        assert write[0][1][8:] == flow[8:] and write[2][1][8:] == out(0)[8:]
        assert commits == [] and x.resolver.counts["learned_ahead"] == 1
        cookie = mapping_flow_mod(one, prefix_key(1000, one.eid))[0]
        assert x.installer.flows_ahead() == {cookie: flow}
        assert session.noted == [cookie]  # confirmed: the commit's sync need not send it again
        # Another packet to the EID that went ahead is sent on, not asked about again.
        x.packet_in(1, 1, 1000, _frame_to("10.9.0.7"))
        assert [t for t, _ in dp.writes[-1]] == [13] and not x.resolver.pending()
        # The commit: everything learned, then the packets that waited for it.
        dp.writes.clear()
        x.installer.commit_pending()
        assert [m.eid for m in commits[0].learn] == [one.eid, group.eid, owned.eid]
        assert not list(x.installer._ahead) and x.installer.flows_ahead() == {}
        assert [[m[8:] for _, m in w] for w in dp.writes] == [[out(1)[8:], out(2)[8:]]]
    finally:
        sock.close()


def test_a_learned_flow_is_committed_once_its_bridges_answered_not_while_in_flight(monkeypatch):
    """A commit that runs while a learned flow is still on its way leaves it
    for the next one: by then the bridges that confirmed it were told so,
    and the commit's sync sends them nothing (controller/session.py)."""
    one = _learned("10.9.0.0/24", "192.0.2.1")
    x, dp, commits, spawned, sock = _xtr_on_a_wire(monkeypatch)
    try:
        x.installer.install([Resolution(one.key, [one], [])])
        x.installer.commit_pending()   # in flight: nothing to commit yet
        assert commits == [] and x.installer._ahead.get(one.iid, one.eid) is one
        _run(spawned)
        assert x.app.sessions[1].noted == [mapping_flow_mod(one, prefix_key(1000, one.eid))[0]]
        x.installer.commit_pending()
        assert [m.eid for m in commits[0].learn] == [one.eid] and not list(x.installer._ahead)
    finally:
        sock.close()


def test_a_refused_learned_flow_drops_its_packets_instead_of_sending_them_round(monkeypatch):
    """The switch refuses one of two learned flows (a full table). Its
    packet, sent behind it, meets no flow and comes back through the miss
    meter: it is dropped and counted, as is the next one, and never sent
    round again (which would loop). The other flow's packets go on."""
    refused, fine = _learned("10.9.0.0/24", "192.0.2.1"), _learned("10.9.1.0/24", "192.0.2.1")
    cookie = mapping_flow_mod(refused, prefix_key(1000, refused.eid))[0]
    x, dp, commits, spawned, sock = _xtr_on_a_wire(monkeypatch, refuse={cookie})
    try:
        x.installer.install([Resolution(m.key, [m], [Held(1, 1, bytes([n]))]) for n, m in enumerate((refused, fine))])
        _run(spawned)
        assert [t for t, _ in dp.writes[0]] == [14, 14, 20, 13, 13]
        assert x.resolver.counts["learned_refused"] == 1
        assert x.app.sessions[1].noted == [mapping_flow_mod(fine, prefix_key(1000, fine.eid))[0]]
        assert x.installer._refused == {(1, refused.key): cookie}
        dp.writes.clear()
        for n in range(2):  # the packet that came back, and the next one
            x.packet_in(1, 1, 1000, _frame_to("10.9.0.7"))
        assert dp.writes == [] and x.resolver.counts["misses_refused"] == 2 and not x.resolver.pending()
        x.packet_in(1, 1, 1000, _frame_to("10.9.1.7"))
        assert [t for t, _ in dp.writes[0]] == [13]
        # Still learned: committed like the other (the bridge's sync tries it again and reports it).
        x.installer.commit_pending()
        assert {m.eid for m in commits[0].learn} == {refused.eid, fine.eid}
        # Asked again later (its TTL ran out) and taken this time: its packets go on again.
        dp.refuse = set()
        x.installer.install([Resolution(refused.key, [refused], [])])
        _run(spawned)
        assert x.installer._refused == {}
        dp.writes.clear()
        x.packet_in(1, 1, 1000, _frame_to("10.9.0.7"))
        assert [t for t, _ in dp.writes[0]] == [13]
    finally:
        sock.close()
