"""The Map-Server and Map-Resolver as pure logic, the negative-prefix rule,
the control listener's dispatch and limits, and the [lisp]/[[site]] config.
No sockets; the real process is tested in test_mapserver_e2e.py."""
from __future__ import annotations

import ipaddress
import random
from dataclasses import replace
from pathlib import Path

import pytest

from lisp_controller.config import ConfigError, parse_config
from lisp_controller.controller.state import Change, State
from lisp_controller.lisp import (ALG_HMAC_SHA_1, Action, AuthKey, EidRecord,
                                  InstanceIdAddress, LocatorRecord, MapNotify, MapRegister, MapReply, MapRequest,
                                  MapRequestRecord, UnknownLcafAddress, decode, sign, verify, wrap_in_ecm)
from lisp_controller.lisp.listener import ControlListener, LogLimiter, RateLimiter, decode_refusal
from lisp_controller.lisp.mapserver import MapResolver, MapServer, Refused
from lisp_controller.lisp.negative import PrefixOrder, cover_length, negative_prefix
from lisp_controller.model import Prefix, as_prefix, parse_prefix
from tests.pcap import udp_frames

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lisp-control"
IID = 1000
V4, V6 = ipaddress.IPv4Address, ipaddress.IPv6Address


def P(text: str) -> Prefix:
    return parse_prefix(text)


def ip(text: str):
    return ipaddress.ip_address(text)


# ---------------------------------------------------------------- negative prefixes

def brute_force(address, known):
    """The definition, literally: the shortest address/L that contains none
    of the known prefixes."""
    for length in range(address.max_prefixlen + 1):
        candidate = ipaddress.ip_network(f"{address}/{length}", strict=False)
        if not any(k.version == address.version and k.network().subnet_of(candidate) for k in known):
            return as_prefix(candidate)
    return None


@pytest.mark.parametrize("address, known, expected", [
    ("10.9.9.9", [], "0.0.0.0/0"),
    ("10.9.9.9", ["2001:db8::/32"], "0.0.0.0/0"),                        # other version: not in the way
    ("10.9.9.9", ["10.1.0.0/16"], "10.8.0.0/13"),                        # the fixture's 15-minute reply
    ("10.1.200.1", ["10.1.0.0/16", "10.1.1.0/24", "10.1.2.0/24"], "10.1.128.0/17"),   # inside a site prefix
    ("10.1.2.1", ["10.1.1.20/32", "10.1.1.30/32"], "10.1.2.0/23"),       # two host EIDs nearby
    ("10.1.3.1", ["10.1.2.0/24", "10.1.4.0/24"], "10.1.3.0/24"),         # adjacent on both sides
    ("10.1.3.1", ["10.1.0.0/16", "10.1.3.0/25", "10.1.3.128/25"], "10.1.3.0/26"),  # nested: inside them
    ("10.1.3.200", ["10.1.3.0/25", "10.0.0.0/8"], "10.1.3.128/25"),      # nested, the other half
    ("10.1.1.20", ["10.1.1.20/32"], None),                               # the address itself is known
    ("0.0.0.0", ["128.0.0.0/1"], "0.0.0.0/1"),
    ("255.255.255.255", ["0.0.0.0/1"], "128.0.0.0/1"),
    ("2001:db8:2::1", ["2001:db8:1::/48"], "2001:db8:2::/47"),
    ("2001:db8:1:8000::1", ["2001:db8:1::/49", "2001:db8::/32"], "2001:db8:1:8000::/49"),
    ("::1", ["::/128", "::2/127"], "::1/128"),
    ("fe80::1", ["2001:db8::/32", "10.0.0.0/8"], "8000::/1"),
])
def test_negative_prefix_with_nested_and_adjacent_prefixes(address, known, expected):
    known = [P(k) for k in known]
    got = negative_prefix(ip(address), known)
    assert got == (P(expected) if expected else None)
    assert got == brute_force(ip(address), known)
    # A sorted index over the same prefixes gives the same answer.
    order = PrefixOrder()
    for k in known:
        order.add((IID,) + tuple(k))
    order.add((IID + 1, 4, 0, 0))   # another IID's everything is not in the way
    assert order.hole(IID, ip(address)) == got


def test_prefix_order_agrees_with_the_definition_on_random_sets():
    rng = random.Random(9301)
    for version, width in ((4, 32), (6, 128)):
        for _ in range(60):
            base = rng.getrandbits(width) & ~((1 << (width - 8)) - 1)   # clustered: shares 8 bits
            known = set()
            for _ in range(rng.randrange(1, 40)):
                length = rng.randrange(8, width + 1)
                value = (base | rng.getrandbits(width - 8)) >> (width - length) << (width - length)
                known.add(Prefix(version, value, length))
            order = PrefixOrder()
            for k in known:
                order.add((IID,) + tuple(k))
            dropped = rng.sample(sorted(known), len(known) // 4)
            for k in dropped:
                order.discard((IID,) + tuple(k))
            known -= set(dropped)
            address_type = V4 if version == 4 else V6
            for _ in range(20):
                address = address_type(base | rng.getrandbits(width - 8))
                assert order.hole(IID, address) == brute_force(address, known), (address, sorted(known))


def test_a_positive_answer_is_narrowed_around_more_specific_mappings():
    order = PrefixOrder()
    for text in ("10.0.0.0/8", "10.1.1.20/32", "10.200.0.0/16"):
        order.add((IID,) + tuple(P(text)))
    assert order.narrowed(IID, ip("10.2.0.1"), P("10.0.0.0/8")) == P("10.2.0.0/15")
    assert order.narrowed(IID, ip("10.64.0.1"), P("10.0.0.0/8")) == P("10.64.0.0/10")
    assert order.narrowed(IID, ip("10.1.1.20"), P("10.1.1.20/32")) == P("10.1.1.20/32")
    assert order.narrowed(IID + 1, ip("10.2.0.1"), P("10.0.0.0/8")) == P("10.0.0.0/8")
    assert cover_length(ip("10.2.0.1"), [P("10.1.1.20/32")], at_least=8) == 15


# ---------------------------------------------------------------- sites, registers, notifies

KEY1, KEY3 = "fixture-A-key1", "fixture-A-key3"
SITE_CONFIG = {
    "lisp": {"listen": "192.168.77.1"},
    "site": [{"name": "A", "keys": [{"key_id": 1, "key": KEY1}, {"key_id": 3, "key": KEY3}],
              "prefixes": [{"iid": IID, "eid": "10.1.0.0/16", "accept_more_specifics": True},
                           {"iid": IID, "eid": "2001:db8:1::/48"}]},
             {"name": "B", "keys": [{"key_id": 1, "alg": "sha1", "key": "b-key"}], "max_registrations": 2,
              "prefixes": [{"iid": IID, "eid": "10.2.0.0/16", "accept_more_specifics": True},
                           {"iid": IID, "eid": "10.3.0.0/16"}]}],
    "bridge": [{"datapath_id": "0000000000000001", "rloc": "192.0.2.1", "iid": IID,
                "endpoint": [{"port": "vnet0", "mac": "52:54:00:00:00:01", "eids": ["10.9.0.20"]}]}],
    "mapping": [{"iid": IID, "eid": "10.8.0.0/16", "action": "drop"},
                {"iid": IID, "eid": "10.2.9.0/24", "rlocs": ["192.0.2.99"]}],
}


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def world(config: dict = SITE_CONFIG):
    config = parse_config(config)
    clock = Clock()
    state = State(config, clock=clock)
    order = PrefixOrder()
    state.cache.watch(order)
    server = MapServer(config.lisp.sites, clock)
    return config, clock, state, server, MapResolver(state.cache, order, server, config.lisp)


def fixture(name: str, number: int = 0):
    return udp_frames(FIXTURES / name)[number]


def record(prefix: str, *rlocs: str, ttl: int = 3, iid: int = IID) -> EidRecord:
    net = ipaddress.ip_network(prefix)
    return EidRecord(InstanceIdAddress(iid, net.network_address), net.prefixlen,
                     tuple(LocatorRecord(ip(r)) for r in rlocs), ttl)


def register(*records: EidRecord, key=AuthKey(1, KEY1), **flags) -> tuple[bytes, MapRegister]:
    flags.setdefault("want_map_notify", True)
    flags.setdefault("use_ttl_for_timeout", True)
    raw = sign(MapRegister(bytes(range(8)), records, xtr_id=bytes(16), **flags), key)
    return raw, decode(raw)


def apply(state: State, accepted) -> None:
    state.apply(Change(learn=accepted.learn, forget=accepted.forget))


def test_the_lispers_net_registers_are_accepted_and_notified_with_the_same_key():
    _, clock, state, server, _ = world()
    for name, key in (("map-register-notify-1rloc.pcap", KEY1),
                      ("map-register-notify-2rloc-v4v6-proxy-keyid1.pcap", KEY1),
                      ("map-register-notify-keyid3.pcap", KEY3)):
        frame = fixture(name)
        accepted = server.register(frame.payload, decode(frame.payload), (str(frame.source), frame.source_port))
        notify = decode(accepted.notify)
        assert isinstance(notify, MapNotify) and verify(accepted.notify, key)
        assert not verify(accepted.notify, KEY3 if key == KEY1 else KEY1)
        sent = decode(frame.payload)
        assert (notify.nonce, notify.key_id, notify.alg_id, notify.records) == (
            sent.nonce, sent.key_id, sent.alg_id, sent.records)
        assert notify.xtr_id == sent.xtr_id
        apply(state, accepted)
    one = state.cache.get(IID, P("10.1.1.0/24"))
    assert one.source == "registered:A" and one.ttl == 3 and one.expires == clock.now + 180
    assert [(str(r.address), r.priority, r.weight) for r in one.rlocs] == [("192.168.77.2", 1, 100)]
    two = state.cache.get(IID, P("2001:db8:1::/48"))
    assert [(str(r.address), r.priority, r.weight) for r in two.rlocs] == [("192.168.77.3", 1, 70),
                                                                          ("192.168.77.4", 2, 30)]
    registration = server.registrations[(IID, P("10.1.2.0/24"))]
    assert registration.proxy_reply and registration.xtr == ("192.168.77.3", 56321)
    assert registration.reply_ttl == 1440
    assert server.counts == {"A": 3, "B": 0}


def test_lifetime_refresh_withdrawal_and_expiry():
    _, clock, state, server, _ = world()
    raw, message = register(record("10.1.5.0/24", "192.0.2.5", ttl=10))
    apply(state, server.register(raw, message, ("192.0.2.5", 4342)))
    assert server.registrations[(IID, P("10.1.5.0/24"))].expires == clock.now + 600   # the TTL asks for 10 min
    # Without lispers.net's use-TTL-for-timeout bit, the record TTL is for
    # ITRs and the registration lasts RFC 9301's three minutes.
    raw, message = register(record("10.1.6.0/24", "192.0.2.5", ttl=1440), use_ttl_for_timeout=False)
    apply(state, server.register(raw, message, ("192.0.2.5", 4342)))
    registration = server.registrations[(IID, P("10.1.6.0/24"))]
    assert (registration.expires, registration.reply_ttl) == (clock.now + 180, 1440)
    clock.now += 170
    raw, message = register(record("10.1.6.0/24", "192.0.2.6", ttl=1440), use_ttl_for_timeout=False)
    apply(state, server.register(raw, message, ("192.0.2.6", 4342)))   # refreshed, and moved
    clock.now += 170
    assert server.expire() == [] and state.expired().forget == []
    assert str(state.cache.get(IID, P("10.1.6.0/24")).rlocs[0].address) == "192.0.2.6"
    clock.now += 15    # 355 s: the refreshed one is three minutes old, the 10-minute one is not
    assert server.expire() == [(IID, P("10.1.6.0/24"))]
    assert state.expired().forget == [(IID, P("10.1.6.0/24"))]
    clock.now += 250
    assert server.expire() == [(IID, P("10.1.5.0/24"))] and server.counts["A"] == 0
    # A record TTL of 0 withdraws.
    raw, message = register(record("10.1.7.0/24", "192.0.2.5"))
    apply(state, server.register(raw, message, ("192.0.2.5", 4342)))
    raw, message = register(record("10.1.7.0/24", "192.0.2.5", ttl=0))
    accepted = server.register(raw, message, ("192.0.2.5", 4342))
    assert accepted.forget == [(IID, P("10.1.7.0/24"))] and not accepted.learn
    apply(state, accepted)
    assert state.cache.get(IID, P("10.1.7.0/24")) is None and server.counts["A"] == 0


def test_registrations_hold_nothing_the_cyclic_collector_walks():
    """Registrations grow with the sites (100,000 EIDs and more) and are
    soft state refreshed every minute; what they hold cannot reference
    back, so none of it is tracked by the collector (its full collections
    hold the hub), and registrations naming the same RLOCs share one set."""
    import gc
    _, clock, state, server, _ = world()
    for n in range(3):
        raw, message = register(record(f"10.1.{n}.0/24", "192.0.2.5", "192.0.2.6"))
        apply(state, server.register(raw, message, ("192.0.2.5", 4342)))
    gc.collect()   # what is left tracked now would be walked by every full collection
    keys = list(server.registrations)
    first, *others = (server.registrations[k] for k in keys)
    assert all(other.mapping.rlocs is first.mapping.rlocs for other in others)
    for key, registration in server.registrations.items():
        rlocs = registration.mapping.rlocs
        held = [key, key[1], registration, registration.xtr, *rlocs, *(r.address for r in rlocs), rlocs]
        assert not [x for x in held if gc.is_tracked(x)], key
    assert not [entry for entry in server._expiry if gc.is_tracked(entry)]


def _lcaf_eid_record() -> EidRecord:
    return replace(record("10.1.8.0/24", "192.0.2.5"), eid=InstanceIdAddress(IID, UnknownLcafAddress(5, b"geo!")))


@pytest.mark.parametrize("reason, build", [
    ("unknown-key-id", lambda: register(record("10.1.8.0/24", "192.0.2.5"), key=AuthKey(2, KEY1))),
    ("unknown-key-id", lambda: register(record("10.1.8.0/24", "192.0.2.5"), key=AuthKey(1, KEY1, ALG_HMAC_SHA_1))),
    ("bad-hmac", lambda: register(record("10.1.8.0/24", "192.0.2.5"), key=AuthKey(1, KEY3))),
    ("prefix-outside-site", lambda: register(record("10.4.0.0/24", "192.0.2.5"))),
    ("prefix-outside-site", lambda: register(record("10.1.8.0/24", "192.0.2.5"), record("10.2.1.0/24", "192.0.2.5"))),
    ("more-specific-not-allowed", lambda: register(record("10.3.1.0/24", "192.0.2.5"),
                                                   key=AuthKey(1, "b-key", ALG_HMAC_SHA_1))),
    ("more-specific-not-allowed", lambda: register(record("2001:db8:1:1::/64", "192.0.2.5"))),
    ("bad-lcaf", lambda: register(_lcaf_eid_record())),
    ("site-full", lambda: register(*(record(f"10.2.{n}.0/24", "192.0.2.5") for n in range(3)),
                                   key=AuthKey(1, "b-key", ALG_HMAC_SHA_1))),
])
def test_each_refused_register_changes_nothing(reason, build):
    _, clock, state, server, _ = world()
    raw, message = register(record("10.1.9.0/24", "192.0.2.9"))
    apply(state, server.register(raw, message, ("192.0.2.9", 4342)))
    before = (dict(server.registrations), dict(server.counts), len(state.cache))
    raw, message = build()
    with pytest.raises(Refused) as refused:
        server.register(raw, message, ("192.0.2.5", 4342))
    assert refused.value.reason == reason
    assert (dict(server.registrations), dict(server.counts), len(state.cache)) == before


def test_a_site_at_its_cap_still_refreshes_and_takes_more_specifics_on_its_own_key():
    _, _, state, server, _ = world()
    key = AuthKey(1, "b-key", ALG_HMAC_SHA_1)
    raw, message = register(record("10.2.1.0/24", "192.0.2.5"), record("10.3.0.0/16", "192.0.2.5"), key=key)
    server.register(raw, message, ("192.0.2.5", 4342))
    accepted = server.register(raw, message, ("192.0.2.5", 4342))   # a refresh at the cap
    assert len(accepted.learn) == 2 and server.counts["B"] == 2
    raw, message = register(record("10.2.2.0/24", "192.0.2.5"), key=key)
    with pytest.raises(Refused, match="site-full"):
        server.register(raw, message, ("192.0.2.5", 4342))


# ---------------------------------------------------------------- Map-Resolver

def ecm(eid: str, iid: int = IID, itr: str = "192.0.2.50", port: int = 36485, wrap: bool = True):
    address = ip(eid)
    request = MapRequest(b"nonce-01", (MapRequestRecord(InstanceIdAddress(iid, address) if wrap else address,
                                                        address.max_prefixlen),), (ip(itr),))
    return wrap_in_ecm(request, ip(itr) if address.version == ip(itr).version else address, address, port)


def reply_of(resolution):
    (payload, target), = resolution.sends
    return decode(payload), target


def test_our_own_endpoints_config_and_holes_are_answered():
    _, _, state, server, resolver = world()
    resolution = resolver.resolve(ecm("10.9.0.20"))
    assert resolution.outcome == "answered"
    reply, target = reply_of(resolution)
    assert target == ("192.0.2.50", 36485) and reply.nonce == b"nonce-01"
    (rec,) = reply.records
    assert (rec.eid, rec.mask_len, rec.ttl, rec.authoritative) == (InstanceIdAddress(IID, V4("10.9.0.20")), 32,
                                                                    1440, False)
    assert [(str(l.address), l.priority, l.weight) for l in rec.locators] == [("192.0.2.1", 1, 100)]
    # a configured negative mapping answers with its action
    reply, _ = reply_of(resolver.resolve(ecm("10.8.1.1")))
    assert (reply.records[0].mask_len, reply.records[0].action, reply.records[0].locators) == (
        16, Action.DROP_NO_REASON, ())
    # a hole: nobody has 10.77.0.1; covering prefix, configured TTL and action
    resolution = resolver.resolve(ecm("10.77.0.1"))
    reply, _ = reply_of(resolution)
    assert resolution.outcome == "negative"
    assert (reply.records[0].eid.address, reply.records[0].mask_len) == (V4("10.64.0.0"), 10)
    assert (reply.records[0].ttl, reply.records[0].action) == (15, Action.NATIVELY_FORWARD)
    # inside a site's prefix, nobody registered: one minute (RFC 9301 section 8.3)
    reply, _ = reply_of(resolver.resolve(ecm("10.1.200.1")))
    assert (reply.records[0].eid.address, reply.records[0].mask_len, reply.records[0].ttl) == (
        V4("10.1.128.0"), 17, 1)
    # IID 0 as a bare address is answered bare
    reply, _ = reply_of(resolver.resolve(ecm("192.0.2.77", iid=0, wrap=False)))
    assert reply.records[0].eid == V4("0.0.0.0") and reply.records[0].mask_len == 0


def test_registered_sites_are_proxied_or_forwarded_to_the_registering_etr():
    _, _, state, server, resolver = world()
    for name in ("map-register-notify-1rloc.pcap", "map-register-notify-2rloc-v4v6-proxy-keyid1.pcap"):
        frame = fixture(name)
        apply(state, server.register(frame.payload, decode(frame.payload), (str(frame.source), frame.source_port)))
    # e2 asked for proxy replies (P bit): answered, as lispers.net did
    (request_frame, reply_frame) = udp_frames(FIXTURES / "lig-ecm-map-request-proxy-reply-2rloc.pcap")
    resolution = resolver.resolve(decode(request_frame.payload))
    reply, target = reply_of(resolution)
    assert resolution.outcome == "answered" and target == ("192.168.77.6", 4342)
    assert reply == decode(reply_frame.payload)   # the same Map-Reply lispers.net sent
    ipv6_request, ipv6_reply = udp_frames(FIXTURES / "lig-ecm-map-request-proxy-reply-ipv6.pcap")
    assert reply_of(resolver.resolve(decode(ipv6_request.payload)))[0] == decode(ipv6_reply.payload)
    # e1 did not: the request goes to the ETR that registered, marked for an ETR
    request_frame = fixture("lig-ecm-map-request-ms-forward-etr-reply.pcap")
    resolution = resolver.resolve(decode(request_frame.payload))
    (payload, target), = resolution.sends
    assert resolution.outcome == "forwarded" and target == ("192.168.77.2", 4342)
    forwarded = decode(payload)
    assert forwarded.to_etr and forwarded.message == decode(request_frame.payload).message
    # unless the site is configured to answer for its ETRs
    config = dict(SITE_CONFIG, site=[dict(SITE_CONFIG["site"][0], proxy_reply=True)])
    _, _, state, server, resolver = world(config)
    frame = fixture("map-register-notify-1rloc.pcap")
    apply(state, server.register(frame.payload, decode(frame.payload), ("192.168.77.2", 44286)))
    assert resolver.resolve(decode(request_frame.payload)).outcome == "answered"


def test_a_registration_hidden_by_config_is_answered_from_the_config():
    _, _, state, server, resolver = world()
    raw, message = register(record("10.2.9.0/24", "192.0.2.5"), key=AuthKey(1, "b-key", ALG_HMAC_SHA_1))
    apply(state, server.register(raw, message, ("192.0.2.5", 4342)))
    assert state.owner((IID, P("10.2.9.0/24"))) == "config"
    reply, _ = reply_of(resolver.resolve(ecm("10.2.9.1")))
    assert [str(l.address) for l in reply.records[0].locators] == ["192.0.2.99"]


def test_an_answer_follows_its_mapping_when_a_register_moves_it():
    """Answers are kept encoded; a new register of the same prefix with
    another RLOC (no prefix comes or goes) must still change the answer."""
    _, _, state, server, resolver = world()
    key = AuthKey(1, "b-key", ALG_HMAC_SHA_1)
    for rloc in ("192.0.2.5", "192.0.2.5", "192.0.2.6"):
        raw, message = register(record("10.2.7.0/24", rloc), key=key, proxy_reply=True)
        apply(state, server.register(raw, message, ("192.0.2.5", 4342)))
        for _ in range(2):   # the second answer comes from what the first one kept
            reply, _ = reply_of(resolver.resolve(ecm("10.2.7.9")))
            assert [str(l.address) for l in reply.records[0].locators] == [rloc]
    assert [(l.address, l.priority, l.weight) for l in reply.records[0].locators] == [(V4("192.0.2.6"), 1, 100)]


def test_requests_we_cannot_answer_are_refused():
    _, _, _, _, resolver = world()
    with pytest.raises(Refused, match="no-itr-rloc"):
        resolver.resolve(ecm("10.9.0.20", itr="2001:db8::50"))
    request = ecm("10.9.0.20")
    with pytest.raises(Refused, match="not-a-map-request"):
        resolver.resolve(replace(request, message=MapReply(bytes(8), ())))
    lcaf = replace(request.message, records=(MapRequestRecord(UnknownLcafAddress(5, b"x"), 32),))
    with pytest.raises(Refused, match="no-usable-record"):
        resolver.resolve(replace(request, message=lcaf))


# ---------------------------------------------------------------- the listener's dispatch

class Counts:
    def __init__(self):
        self.values: dict = {}

    def inc(self, name, amount=1.0, **labels):
        key = (name, tuple(sorted(labels.items())))
        self.values[key] = self.values.get(key, 0) + amount

    def observe(self, name, value, count=1):
        self.inc(name + "_count", count)


def listener_with(handler, rate=None):
    counts, refused = Counts(), []
    clock = Clock(0.0)
    listener = ControlListener("127.0.0.1", 4342, counts, max_sources=4, clock=clock)
    listener.on(MapRegister, handler, lambda reason, source: refused.append(reason), rate, "latency")
    return listener, counts, refused, clock


def test_the_listener_classifies_refusals_and_survives_its_handlers():
    good = fixture("map-register-notify-1rloc.pcap").payload
    calls = []
    listener, counts, refused, _ = listener_with(lambda m, raw, src: calls.append(src) or [(b"ok", src)])
    assert listener.handle(good, ("192.0.2.1", 1)) == [(b"ok", ("192.0.2.1", 1))]
    assert counts.values[("latency_count", ())] == 1
    lcaf_body = bytearray(good)
    lcaf_body[good.index(bytes.fromhex("400300000200")) + 7] = 12   # IID-LCAF length 10 -> 12
    for data, reason in ((good[:40], "truncated"), (bytes(lcaf_body), "bad-lcaf"),
                         (good[:58] + b"\x00\x09" + good[60:], "malformed")):   # the EID's AFI
        assert listener.handle(data, ("192.0.2.1", 1)) == []
        assert refused[-1] == reason, data
    assert listener.handle(b"", ("192.0.2.1", 1)) == [] and listener.handle(b"\x20" * 30, ("192.0.2.1", 1)) == []
    assert counts.values[("lisp_control_dropped_total", (("reason", "empty"),))] == 1
    assert counts.values[("lisp_control_dropped_total", (("reason", "unhandled-type"),))] == 1

    def broken(message, raw, source):
        raise KeyError("a bug")
    listener, counts, refused, _ = listener_with(broken)
    assert listener.handle(good, ("192.0.2.1", 1)) == [] and listener.handle(good, ("192.0.2.1", 1)) == []
    assert counts.values[("lisp_control_dropped_total", (("reason", "handler-error"),))] == 2


class _Waited(Exception):
    """The fake socket was asked to wait for more: the test is over."""


class QueuedSocket:
    """A green socket's two sides, faked: ``fd`` (the OS socket) holds the
    queued datagrams and says BlockingIOError when none is left;
    ``recvfrom`` (the wait on the hub) gives the next refill, or ends the
    test. Every read and send is recorded in order."""

    def __init__(self, *refills):
        self.refills = [list(r) for r in refills]
        self.queue, self.events, self.sent = self.refills.pop(0), [], []
        self.fd = self._OsSide(self)

    class _OsSide:
        def __init__(self, outer):
            self.outer = outer

        def recvfrom(self, size):
            if not self.outer.queue:
                raise BlockingIOError
            self.outer.events.append("read")
            return self.outer.queue.pop(0)

        def sendto(self, payload, target):
            self.outer.events.append("send")
            self.outer.sent.append((payload, target))

    def recvfrom(self, size):
        if not self.refills:
            raise _Waited
        self.events.append("wait")
        self.queue = self.refills.pop(0)
        return self.fd.recvfrom(size)


def test_the_listener_reads_what_is_queued_then_answers_it_together_and_survives_garbage():
    """serve() reads up to MAX_BATCH queued datagrams before answering any,
    sends the batch's answers together (a waiting client is woken once per
    batch), counts every datagram and times every answered one; an empty or
    unhandled datagram in a batch costs only itself."""
    from lisp_controller.lisp.listener import MAX_BATCH
    good = fixture("map-register-notify-1rloc.pcap").payload
    listener, counts, _, _ = listener_with(lambda m, raw, src: [(b"ok", src)])
    first = [(good, ("192.0.2.1", n)) for n in range(MAX_BATCH + 8)]
    first[3], first[MAX_BATCH + 2] = (b"", ("192.0.2.9", 1)), (b"\x20" * 30, ("192.0.2.9", 2))
    later = [(good, ("192.0.2.2", 1)), (good, ("192.0.2.2", 2))]
    listener.sock = sock = QueuedSocket(first, later)
    with pytest.raises(_Waited):
        listener.serve()
    assert sock.events == (["read"] * MAX_BATCH + ["send"] * (MAX_BATCH - 1) + ["read"] * 8 + ["send"] * 7
                           + ["wait", "read", "read", "send", "send"])
    assert [target for _, target in sock.sent] == [src for data, src in first + later if data == good]
    assert counts.values[("lisp_control_datagrams_total", ())] == MAX_BATCH + 8 + 2
    assert counts.values[("latency_count", ())] == MAX_BATCH + 8 - 2 + 2
    assert counts.values[("lisp_control_dropped_total", (("reason", "empty"),))] == 1
    assert counts.values[("lisp_control_dropped_total", (("reason", "unhandled-type"),))] == 1


def test_decode_errors_map_to_reasons():
    from lisp_controller.lisp import LispDecodeError
    assert decode_refusal(LispDecodeError("truncated: need 4 bytes")) == "truncated"
    assert decode_refusal(LispDecodeError("3 EID records cannot fit in 20 bytes")) == "truncated"
    assert decode_refusal(LispDecodeError("Instance-ID LCAF: 2 bytes beyond its address")) == "bad-lcaf"
    assert decode_refusal(LispDecodeError("unsupported AFI 9")) == "malformed"


def test_rate_limits_per_source_with_a_bounded_number_of_sources():
    good = fixture("map-register-notify-1rloc.pcap").payload
    listener, counts, refused, clock = listener_with(lambda m, raw, src: [(b"ok", src)], rate=2)
    ok = [(b"ok", ("192.0.2.1", 1))]
    assert [listener.handle(good, ("192.0.2.1", 1)) for _ in range(3)] == [ok, ok, []]   # a burst of 2
    assert refused == ["rate-limited"]
    assert listener.handle(good, ("192.0.2.2", 1)) == [(b"ok", ("192.0.2.2", 1))]       # others unaffected
    clock.now += 0.5                             # one token back
    assert listener.handle(good, ("192.0.2.1", 1)) == ok and refused == ["rate-limited"]
    limiter = RateLimiter(1, max_sources=3, clock=clock)   # a batch reads the clock once and says when
    assert limiter.allow("a", now=clock.now) and not limiter.allow("a", now=clock.now + 0.5)
    assert limiter.allow("a", now=clock.now + 1.5)
    limiter = RateLimiter(1, max_sources=3, clock=clock)
    for n in range(10):                          # spoofed sources: tracked up to 3, then one shared bucket
        limiter.allow(f"198.51.100.{n}")
    assert len(limiter._buckets) <= 4
    log = LogLimiter(interval=60, clock=clock)
    assert log("a", "bad-hmac") and not log("a", "bad-hmac") and log("a", "truncated") and log("b", "bad-hmac")
    clock.now += 61
    assert log("a", "bad-hmac")


# ---------------------------------------------------------------- config

def test_sites_config_parses_keys_from_the_file_or_the_environment(monkeypatch):
    monkeypatch.setenv("SITE_B_KEY", "from-the-environment")
    config = parse_config({"lisp": {"listen": "127.0.0.1", "port": 14342, "negative_ttl": 5,
                                    "negative_action": "drop", "register_rate": 5, "request_rate": 50},
                           "site": [{"name": "b", "keys": [{"key_id": 7, "alg": "sha1", "key_env": "SITE_B_KEY"}],
                                     "prefixes": [{"iid": 5, "eid": "10.0.0.0/8"}]}]})
    lisp = config.lisp
    assert (lisp.listen, lisp.port, lisp.negative_ttl, lisp.negative_action) == ("127.0.0.1", 14342, 5, "drop")
    (site,) = lisp.sites
    assert site.key(7, ALG_HMAC_SHA_1).secret == b"from-the-environment" and site.key(7, 2) is None
    assert "from-the-environment" not in repr(config)
    assert config.overlay.bridges == ()   # a Map-Server only needs no bridge
    assert not parse_config({"bridge": SITE_CONFIG["bridge"]}).lisp.enabled
    with pytest.raises(ConfigError, match="no \\[\\[bridge\\]\\] given"):
        parse_config({"lisp": {"port": 4342}})   # without listen, a bridge is still needed


def test_bad_sites_are_each_reported_with_their_key(monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    bad = {"lisp": {"port": 0, "bogus": 1},
           "site": [{"name": "x y", "keys": [{"key_id": 0, "key": "k"}], "prefixes": []},
                    {"name": "ok", "keys": [{"key_id": 1, "key_env": "NOT_SET_ANYWHERE"},
                                            {"key_id": 2, "alg": "md5", "key": "k"}],
                     "prefixes": [{"iid": 1, "eid": "10.0.0.1/8"}]},
                    {"name": "dup", "keys": [{"key_id": 1, "key": "k"}],
                     "prefixes": [{"iid": 1, "eid": "10.0.0.0/8"}]},
                    {"name": "dup2", "keys": [{"key_id": 1, "key": "k"}],
                     "prefixes": [{"iid": 1, "eid": "10.0.0.0/8"}]},
                    {"name": "twice", "keys": [{"key_id": 1, "key": "k"}, {"key_id": 1, "key": "k2"}],
                     "prefixes": [{"iid": 1, "eid": "10.0.0.0/8"}]}]}
    with pytest.raises(ConfigError) as e:
        parse_config(bad, "x.toml")
    text = "\n".join(e.value.problems)
    for expected in ("lisp.port", "lisp.bogus: unknown key", "site[0].name", "site[0].keys[0].key_id",
                     "site[0].prefixes", "site[1].keys[0].key_env: environment variable NOT_SET_ANYWHERE",
                     "site[1].keys[1].alg", "site[1].prefixes[0].eid", "site[4].keys[1].key_id: key-id 1 is given twice",
                     "site[3].prefixes: 1:10.0.0.0/8 is also a prefix of site 'dup'",
                     "sites need the control listener"):
        assert expected in text, (expected, text)
