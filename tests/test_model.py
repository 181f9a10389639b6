import ipaddress
import re

import pytest

from lisp_controller.model import (IID_MAX, Endpoint, MapCache, Mapping, ModelError, Rloc,
                                   parse_iid, parse_prefix)


def same(prefix, network) -> bool:
    """Our prefix holds exactly what the ipaddress network does."""
    return (type(prefix).__name__ == "Prefix" and str(prefix) == str(network)
            and (prefix.version, prefix.value, prefix.prefixlen)
            == (network.version, int(network.network_address), network.prefixlen))


def m(iid, eid, *rlocs, **kw):
    return Mapping.parse({"iid": iid, "eid": eid, "rlocs": list(rlocs), **kw})


def test_lpm_nested_prefixes():
    cache = MapCache([m(1, "10.0.0.0/8", "192.0.2.1"), m(1, "10.1.0.0/16", "192.0.2.2"),
                      m(1, "10.1.1.0/24", "192.0.2.3"), m(1, "10.1.1.7/32", "192.0.2.4")])
    rloc = lambda addr: str(cache.lookup(1, addr).rloc_shares()[0][0])
    assert rloc("10.1.1.7") == "192.0.2.4"
    assert rloc("10.1.1.8") == "192.0.2.3"
    assert rloc("10.1.2.1") == "192.0.2.2"
    assert rloc("10.200.0.1") == "192.0.2.1"
    assert cache.lookup(1, "11.0.0.1") is None


def test_default_route_and_removal():
    cache = MapCache([m(1, "0.0.0.0/0", "192.0.2.9"), m(1, "10.1.0.0/16", "192.0.2.2")])
    assert cache.lookup(1, "10.1.0.1").eid == parse_prefix("10.1.0.0/16")
    cache.remove(1, parse_prefix("10.1.0.0/16"))
    assert cache.lookup(1, "10.1.0.1").eid == parse_prefix("0.0.0.0/0")
    assert len(cache) == 1


def test_lpm_ipv6():
    cache = MapCache([m(7, "2001:db8::/32", "192.0.2.1"), m(7, "2001:db8:1::/48", "2001:db8:ff::1")])
    assert str(cache.lookup(7, "2001:db8:1::5").rloc_shares()[0][0]) == "2001:db8:ff::1"
    assert str(cache.lookup(7, "2001:db8:2::5").rloc_shares()[0][0]) == "192.0.2.1"
    assert cache.lookup(7, "10.0.0.1") is None  # an IPv4 address never matches IPv6 prefixes


def test_iid_isolation():
    cache = MapCache([m(100, "10.0.0.0/24", "192.0.2.1"), m(200, "10.0.0.0/24", "192.0.2.2")])
    assert str(cache.lookup(100, "10.0.0.5").rloc_shares()[0][0]) == "192.0.2.1"
    assert str(cache.lookup(200, "10.0.0.5").rloc_shares()[0][0]) == "192.0.2.2"
    assert cache.lookup(300, "10.0.0.5") is None


def test_rloc_shares_lowest_priority_wins_by_weight_and_255_is_never_used():
    shares = lambda mapping: [(str(a), w) for a, w in mapping.rloc_shares()]
    mapping = m(1, "10.0.0.0/8", {"address": "192.0.2.5", "priority": 2},
                {"address": "192.0.2.4", "priority": 1, "weight": 10},
                {"address": "192.0.2.3", "priority": 1, "weight": 90},
                {"address": "192.0.2.1", "priority": 0, "weight": 50})
    assert shares(mapping) == [("192.0.2.1", 50)]
    # Equal priority: every RLOC gets its weight's share, listed by address.
    mapping = m(1, "10.0.0.0/8", {"address": "192.0.2.4", "priority": 1, "weight": 10},
                {"address": "192.0.2.3", "priority": 1, "weight": 90},
                {"address": "192.0.2.9", "priority": 3, "weight": 100})
    assert shares(mapping) == [("192.0.2.3", 90), ("192.0.2.4", 10)]
    # Weight 0 gets nothing while another has weight; all 0 share equally.
    mapping = m(1, "10.0.0.0/8", {"address": "192.0.2.4", "weight": 0}, {"address": "192.0.2.3", "weight": 5})
    assert shares(mapping) == [("192.0.2.3", 5)]
    mapping = m(1, "10.0.0.0/8", {"address": "2001:db8::1", "weight": 0}, {"address": "192.0.2.3", "weight": 0})
    assert shares(mapping) == [("192.0.2.3", 1), ("2001:db8::1", 1)]
    # Priority 255 is never used, even when it is the only priority left.
    mapping = m(1, "10.0.0.0/8", {"address": "192.0.2.1", "priority": 255, "weight": 100},
                {"address": "192.0.2.2", "priority": 254, "weight": 1})
    assert shares(mapping) == [("192.0.2.2", 1)]
    unusable = m(1, "10.0.0.0/8", {"address": "192.0.2.1", "priority": 255}, action="drop")
    assert unusable.rloc_shares() == ()
    assert m(1, "10.0.0.0/8", {"address": "192.0.2.1", "priority": 255},
             {"address": "192.0.2.2", "priority": 255}).rloc_shares() == ()


@pytest.mark.parametrize("raw, field, words", [
    ({"iid": -1, "eid": "10.0.0.0/8"}, "mapping.iid", "between 0 and 16777215"),
    ({"iid": IID_MAX + 1, "eid": "10.0.0.0/8"}, "mapping.iid", "between 0 and"),
    ({"iid": "5", "eid": "10.0.0.0/8"}, "mapping.iid", "must be an integer"),
    ({"iid": 1, "eid": "10.1.1.1/24"}, "mapping.eid", "not a valid prefix"),
    ({"iid": 1, "eid": "banana"}, "mapping.eid", "not a valid prefix"),
    ({"iid": 1}, "mapping.eid", "is required"),
    ({"iid": 1, "eid": "10.0.0.0/8", "rlocs": ["not-an-ip"]}, "mapping.rlocs[0]", "not an IPv4 or IPv6"),
    ({"iid": 1, "eid": "10.0.0.0/8", "rlocs": [{"address": "192.0.2.1", "priority": 256}]},
     "mapping.rlocs[0].priority", "between 0 and 255"),
    ({"iid": 1, "eid": "10.0.0.0/8", "rlocs": [{"address": "192.0.2.1", "weight": 101}]},
     "mapping.rlocs[0].weight", "between 0 and 100"),
    ({"iid": 1, "eid": "10.0.0.0/8", "rlocs": ["192.0.2.1", "192.0.2.1"]},
     "mapping.rlocs[1].address", "listed twice"),
    ({"iid": 1, "eid": "10.0.0.0/8", "action": "explode"}, "mapping.action", "must be one of"),
    ({"iid": 1, "eid": "10.0.0.0/8", "ttl": 0}, "mapping.ttl", "between 1 and"),
    ({"iid": 1, "eid": "10.0.0.0/8", "colour": "red"}, "mapping.colour", "unknown field"),
])
def test_mapping_validation_names_the_field(raw, field, words):
    with pytest.raises(ModelError) as err:
        Mapping.parse(raw)
    assert err.value.field == field
    assert words in str(err.value)


def test_endpoint_validation():
    ep = Endpoint.parse({"port": "vnet0", "mac": "52:54:00:B8:27:75", "eids": ["10.1.1.20", "2001:db8::20"]},
                        "endpoint[0]", default_iid=5)
    assert ep.iid == 5 and ep.mac == "52:54:00:b8:27:75" and len(ep.eids) == 2
    with pytest.raises(ModelError, match=r"endpoint\[0\].mac"):
        Endpoint.parse({"port": "p", "mac": "52:54:00", "eids": ["10.0.0.1"]}, "endpoint[0]", 1)
    with pytest.raises(ModelError, match=r"endpoint\[0\].iid: is required"):
        Endpoint.parse({"port": "p", "mac": "52:54:00:00:00:01", "eids": ["10.0.0.1"]}, "endpoint[0]", None)
    with pytest.raises(ModelError, match=r"endpoint\[0\].eids: must be a non-empty"):
        Endpoint.parse({"port": "p", "mac": "52:54:00:00:00:01", "eids": []}, "endpoint[0]", 1)


def test_parsers_reject_bools_and_accept_host_prefix():
    with pytest.raises(ModelError):
        parse_iid(True)
    assert same(parse_prefix("10.1.1.20"), ipaddress.ip_network("10.1.1.20/32"))
    assert Rloc.parse("2001:db8::1").address.version == 6


TRICKY = ["10.1.0.0/16", "10.1.1.1", "0.0.0.0/0", "10.1.1.1/24", "010.1.1.1/32", "10.1.1.0/33", "10.1.1.0/ 24",
          "1.2.3.4/032", "::/0", "2001:db8::/32", "10.1.1.0/-1", "1.2.3", "256.1.1.1/32", " 10.0.0.0/8",
          "10.0.0.0/8 ", "1.2.3.4/", "0x1.2.3.4/32", "1.2.3.4/32/1", "", "255.255.255.255/32",
          "1.2.3.4/0032", "10.0.0.0/\u0661\u0662", "10.0.0.0/\u00b2", "10.0.0.0/+8", "10.0.0.0/8\0",
          "10.0.0.0\0/8", "10.0.0.0/255.0.0.0", "10.0.0.0/0.255.255.255", "10.0.0.0/255.0.255.0",
          "2001:db8::1", "2001:db8::1/128", "2001:db8::1/64", "2001:db8::/129", "2001:DB8::/32",
          "2001:0db8::/32", "::ffff:1.2.3.4/128", "::ffff:102:304/128", "::1.2.3.4", "fe80::1%eth0/128",
          "fe80::1%eth0", ":::/0", "1:2:3:4:5:6:7:8/128", "1:2:3:4:5:6:7:8:9/128", "1::2::3/128",
          "2001:db8::/0x20", "2001:db8:0:0:1::/80", "2001:db8::/\u0663\u0662", "::", "::/128"]


@pytest.mark.parametrize("text", TRICKY + [f"{a}.{b}.{c}.{d}/{p}" for a, b, c, d, p in
                                           [(10, 0, 0, 0, 8), (192, 168, 0, 0, 15), (172, 16, 7, 128, 25)]])
def test_fast_prefix_parsing_agrees_with_ipaddress(text):
    """The IPv4 fast path must accept and refuse exactly what ipaddress does,
    except for two things ipaddress takes and we refuse: a scope ID and a
    zero-padded prefix length."""
    try:
        expected = ipaddress.ip_network(text, strict=True)
    except ValueError:
        expected = None
    if expected is not None and re.search(r"/0\d", text):
        with pytest.raises(ModelError, match="is not a valid prefix .the prefix length has a leading zero"):
            parse_prefix(text)
    elif expected is not None and expected.version == 6 and expected.network_address.scope_id:
        # ipaddress keeps a scope ID (fe80::1%eth0); flows cannot match on one.
        with pytest.raises(ModelError, match="is not a valid prefix .an EID prefix has no scope ID"):
            parse_prefix(text)
    elif expected is None:
        with pytest.raises(ModelError) as err:
            parse_prefix(text)
        with pytest.raises(ValueError) as theirs:
            ipaddress.ip_network(text, strict=True)
        assert str(err.value) == f"eid: {text!r} is not a valid prefix ({theirs.value})"
    else:
        assert same(parse_prefix(text), expected)


def test_fast_address_parsing_agrees_with_ipaddress():
    import random
    rnd = random.Random(7)
    samples = [".".join(str(rnd.randrange(0, 300)) for _ in range(4)) for _ in range(2000)]
    samples += ["01.2.3.4", "1.2.3.04", "1.2.3", "1.2.3.4.5", "::1", "fe80::1", "1.2.3.4 "]
    from lisp_controller.model import parse_address
    for text in samples:
        try:
            expected = ipaddress.ip_address(text)
        except ValueError:
            expected = None
        if expected is None:
            with pytest.raises(ModelError):
                parse_address(text, "x")
        else:
            assert parse_address(text, "x") == expected, text


# -- the Prefix type ---------------------------------------------------------

def _sample_networks():
    """IPv4 and IPv6 networks of every kind ipaddress prints differently:
    edge lengths, hosts, zero runs of every length and place, and the
    addresses a C library would write with a dotted quad."""
    import random
    rnd = random.Random(11)
    nets = []
    for length in (0, 1, 7, 8, 15, 16, 24, 25, 30, 31, 32):
        for value in (0, 0xFFFFFFFF, 0x0A000000, 0xC0A80101, rnd.getrandbits(32)):
            nets.append(ipaddress.ip_network((value, length), strict=False))
    v6 = [0, 1, (1 << 128) - 1, 0xFFFF << 32 | 0x01020304, 0x01020304, 0xFFFE << 32 | 0x01020304,
          0x0064FF9B << 96 | 0x01020304, 1 << 112, 1 << 16, 0x20010DB8 << 96, 0x20010DB8 << 96 | 1 << 64 | 1]
    for _ in range(60):  # zero runs: each 16-bit group zero with probability 1/2
        v6.append(sum(rnd.getrandbits(16) << (16 * i) for i in range(8) if rnd.random() < 0.5))
    for value in v6:
        for length in (0, 1, 16, 32, 48, 63, 64, 65, 96, 112, 120, 127, 128):
            nets.append(ipaddress.ip_network((value, length), strict=False))
    return nets


def test_prefix_text_and_fields_equal_ipaddress():
    from lisp_controller.model import Prefix, as_prefix
    for net in _sample_networks():
        p = Prefix(net.version, int(net.network_address), net.prefixlen)
        assert str(p) == str(net) and f"{p}" == str(net) and repr(p) == f"Prefix('{net}')"
        assert p.version == net.version and p.prefixlen == net.prefixlen
        assert p.max_prefixlen == net.max_prefixlen
        assert p.network_address == net.network_address and p.netmask == net.netmask
        assert p.network() == net and as_prefix(net) == p
        assert parse_prefix(str(net)) == p and type(parse_prefix(str(net))) is Prefix
        assert net.network_address in p and (net.broadcast_address in p)
        outside = int(net.network_address) - 1
        if outside >= 0:
            assert type(net.network_address)(outside) not in p


def test_prefix_equality_hash_and_order_agree_with_ipaddress():
    from lisp_controller.model import Prefix
    nets = _sample_networks()
    nets += [ipaddress.ip_network(str(n)) for n in nets[::3]]  # equal values, other objects
    ours = [Prefix(n.version, int(n.network_address), n.prefixlen) for n in nets]
    for a, pa in zip(nets[::13], ours[::13]):
        for b, pb in zip(nets, ours):
            assert (pa == pb) == (a == b) and (pa != pb) == (a != b)
            if a == b:
                assert hash(pa) == hash(pb)
            if a.version == b.version:
                assert (pa < pb) == (a < b) and (pa <= pb) == (a <= b) and (pa > pb) == (a > b)
            else:  # ipaddress refuses to order across versions; IPv4 comes first here
                assert (pa < pb) == (a.version == 4)
    assert len(set(ours)) == len(set(nets))
    for version in (4, 6):
        theirs = sorted(n for n in nets if n.version == version)
        assert [str(p) for p in sorted(p for p in ours if p.version == version)] == [str(n) for n in theirs]
    # /0, a host, and the same address at two lengths are three prefixes.
    assert len({parse_prefix("0.0.0.0/0"), parse_prefix("0.0.0.0/32"), parse_prefix("::/0"),
                parse_prefix("::/128"), parse_prefix("10.0.0.0/8"), parse_prefix("10.0.0.0/9")}) == 6
    assert parse_prefix("0.0.0.0/0") != parse_prefix("::/0") and parse_prefix("::/0") > parse_prefix("0.0.0.0/0")


def test_prefix_subnet_of_agrees_with_ipaddress():
    texts = ["0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.1.0/24", "10.1.1.1/32", "11.0.0.0/8",
             "10.128.0.0/9", "::/0", "2001:db8::/32", "2001:db8:1::/48", "2001:db8:1::1/128", "2001:db9::/32"]
    for a in texts:
        for b in texts:
            na, nb = ipaddress.ip_network(a), ipaddress.ip_network(b)
            if na.version != nb.version:
                with pytest.raises(TypeError):
                    parse_prefix(a).subnet_of(parse_prefix(b))
            else:
                assert parse_prefix(a).subnet_of(parse_prefix(b)) == na.subnet_of(nb), (a, b)


def test_prefix_constructor_refuses_what_is_not_a_prefix():
    from lisp_controller.model import Prefix
    assert Prefix(4, 0, 0) == parse_prefix("0.0.0.0/0") and Prefix(6, (1 << 128) - 1, 128) == parse_prefix(
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
    for bad in [(4, 0x0A010101, 24), (4, 0, 33), (4, 0, -1), (6, 0, 129), (5, 0, 8), (4, -1, 32),
                (4, 1 << 32, 32), (6, 1 << 128, 128), (4, 0, True), (True, 0, 8), (4.0, 0, 8),
                (4, ipaddress.IPv4Address("10.0.0.0"), 8), (4, 0, 8.0), (4, "0", 8), (6, 1, 64)]:
        with pytest.raises(ValueError, match="not an IP prefix"):
            Prefix(*bad)


def test_every_creator_makes_the_same_prefix(tmp_path):
    """Config, API, store and endpoint host mappings all key the same
    (IID, prefix): the state compares those tuples."""
    import copy
    import pickle
    from lisp_controller.model import Bridge, Prefix, as_prefix, endpoint_mappings, prefix_key
    from lisp_controller.store.sqlite import Store
    texts = ["10.1.1.20/32", "2001:db8::20/128", "10.2.0.0/16", "fd00:1::/48", "0.0.0.0/0", "::/0"]
    parsed = [Mapping.parse({"iid": 7, "eid": t, "rlocs": ["192.0.2.1"]}, source="api") for t in texts]
    store = Store(tmp_path / "s.db")
    store.write(parsed)
    loaded = sorted(store.load()[0], key=lambda m: prefix_key(m.iid, m.eid))
    assert [m.eid for m in loaded] == sorted(m.eid for m in parsed)
    bridge = Bridge("hv", 1, None, ipaddress.ip_address("192.0.2.1"), "lisp0", "ovs", "52:54:00:00:00:01")
    ep = Endpoint.parse({"port": "p", "mac": "52:54:00:00:00:02", "eids": ["10.1.1.20", "2001:db8::20"]}, "ep", 7)
    hosts = [m.eid for m in endpoint_mappings(bridge, ep)]
    assert hosts == [parsed[0].eid, parsed[1].eid]
    slow = parse_prefix("10.2.0.0/255.255.0.0")  # ipaddress's path
    assert slow == parsed[2].eid
    for eid in [m.eid for m in parsed + loaded] + hosts + [slow, as_prefix(ipaddress.ip_network("10.2.0.0/16"))]:
        assert type(eid) is Prefix
        assert all(type(x) is int for x in eid)
        assert prefix_key(7, eid) == (7, eid.version, int(eid.network_address), eid.prefixlen)
        assert type(prefix_key(7, eid)) is tuple
        assert copy.deepcopy(eid) == eid and pickle.loads(pickle.dumps(eid)) == eid
        assert type(pickle.loads(pickle.dumps(eid))) is Prefix
    assert prefix_key(7, ipaddress.ip_network("10.2.0.0/16")) == (7, 4, 0x0A020000, 16)
    assert {(7, parsed[2].eid): 1}.get((7, parse_prefix("10.2.0.0/16"))) == 1


def test_parse_builds_every_field_of_a_mapping():
    """Mapping.parse makes its tuple without the named tuple's __new__: a
    new field must be added there too."""
    raw = {"iid": 7, "eid": "10.2.0.0/16", "rlocs": ["192.0.2.1"], "ttl": 5, "action": "drop"}
    m = Mapping.parse(raw, source="api")
    assert type(m) is Mapping and len(m) == len(Mapping._fields)
    assert m == Mapping(7, parse_prefix("10.2.0.0/16"), (Rloc(ipaddress.ip_address("192.0.2.1")),), 5, "drop", "api")
    assert Mapping.parse({"iid": 7, "eid": "10.2.0.0/16"}) == Mapping(7, parse_prefix("10.2.0.0/16"))
    for bad, field in [({"iid": True, "eid": "10.0.0.0/8"}, "mapping.iid"), ({"iid": 1, "eid": 5}, "mapping.eid"),
                       ({"iid": 1, "eid": "10.0.0.0/8", "action": ["drop"]}, "mapping.action"),
                       ({"eid": "10.0.0.0/8"}, "mapping.iid"), ({"iid": 1, "eid": "10.0.0.0/8", "rlocs": "x"}, "mapping.rlocs")]:
        with pytest.raises(ModelError) as err:
            Mapping.parse(bad)
        assert err.value.field == field


# -- values a router would refuse (README.rst, "What is refused and why") ------------------

NOT_AN_RLOC = {
    "0.0.0.0": "the unspecified address", "0.1.2.3": "0.0.0.0/8", "127.0.0.1": "loopback",
    "127.255.0.9": "loopback", "224.0.0.1": "multicast", "239.255.255.255": "multicast",
    "255.255.255.255": "the broadcast address", "::": "the unspecified address", "::1": "the loopback address",
    "ff02::1": "multicast", "ff0e::1": "multicast", "fe80::1": "link-local", "febf::1": "link-local",
    "fe80::1%eth0": "scoped", "2001:db8::1%2": "scoped", "::ffff:192.0.2.1": "write 192.0.2.1",
    "::ffff:c000:201": "write 192.0.2.1",
}
RLOCS_OK = ["192.0.2.1", "1.0.0.0", "126.255.255.255", "128.0.0.1", "223.255.255.255", "240.0.0.1",
            "255.255.255.254", "2001:db8::1", "fd00::1", "fec0::1", "::2", "64:ff9b::c000:201"]


@pytest.mark.parametrize("text", sorted(NOT_AN_RLOC))
def test_an_rloc_must_be_a_unicast_destination(text):
    """In every form an RLOC is written: a string, a table, the fast path's
    dotted quad and ipaddress's spellings; the field and the reason named."""
    for rloc, field in ((text, "mapping.rlocs[0]"), ({"address": text, "priority": 1}, "mapping.rlocs[0].address")):
        for rlocs in ([rloc], [rloc, "192.0.2.99"]):
            with pytest.raises(ModelError) as err:
                Mapping.parse({"iid": 1, "eid": "10.0.0.0/8", "rlocs": rlocs})
            assert err.value.field == field
            assert NOT_AN_RLOC[text] in err.value.problem and "an RLOC must be a unicast address" in err.value.problem


def test_unicast_rlocs_are_taken_as_written():
    for text in RLOCS_OK:
        assert str(Mapping.parse({"iid": 1, "eid": "10.0.0.0/8", "rlocs": [text]}).rlocs[0].address) == text
        assert Rloc.parse({"address": text}).address == ipaddress.ip_address(text)


@pytest.mark.parametrize("text, words", [
    ("0.0.0.0", "the unspecified address"), ("255.255.255.255", "the broadcast address"),
    ("224.0.0.5", "multicast"), ("127.0.0.1", "loopback"), ("::", "unspecified"), ("::1", "loopback"),
    ("ff02::1", "multicast"), ("fe80::1%eth0", "scoped")])
def test_an_endpoint_eid_must_be_a_host_address(text, words):
    with pytest.raises(ModelError) as err:
        Endpoint.parse({"port": "p", "mac": "52:54:00:00:00:01", "eids": ["10.0.0.1", text]}, "endpoint", 1)
    assert err.value.field == "endpoint.eids[1]" and words in err.value.problem and "not a host's address" in str(err.value)


def test_host_eids_that_are_fine():
    ep = Endpoint.parse({"port": "p", "mac": "52:54:00:00:00:01",
                         "eids": ["10.0.0.1", "fe80::1", "2001:db8::1", "192.168.1.255"]}, "endpoint", 1)
    assert len(ep.eids) == 4


@pytest.mark.parametrize("mac, words", [
    ("ff:ff:ff:ff:ff:ff", "the broadcast address"), ("FF:FF:FF:FF:FF:FF", "the broadcast address"),
    ("01:00:5e:00:00:01", "a multicast address"), ("33:33:00:00:00:01", "a multicast address"),
    ("03:00:00:00:00:00", "a multicast address"), ("00:00:00:00:00:00", "all zeros"),
    ("52:54:00:b8:27:75\n", "must be a MAC address")])
def test_an_endpoint_mac_must_be_a_station_address(mac, words):
    with pytest.raises(ModelError) as err:
        Endpoint.parse({"port": "p", "mac": mac, "eids": ["10.0.0.1"]}, "endpoint", 1)
    assert err.value.field == "endpoint.mac" and words in err.value.problem


@pytest.mark.parametrize("port, words", [
    ("a/b", "contains '/'"), ("../x", "contains '/'"), ("/", "contains '/'"), (".", "is not an interface name"),
    ("..", "is not an interface name"), ("x" * 16, "is 16 bytes; an interface name has at most 15"),
    ("x" * 300, "'xxxxxxxxxxxxxxxxxxxx'... (300 characters) is 300 bytes"), ("a b", "whitespace"),
    ("tab\t", "whitespace"), ("vnet0\n", "whitespace"), ("v\u00e9th0", "not printable ASCII"),
    ("\u00e9" * 8, "is 16 bytes"), ("nul\0", "not printable ASCII"), ("", "must be an interface name"),
    (5, "must be an interface name")])
def test_a_port_name_follows_the_rules_for_interface_names(port, words):
    with pytest.raises(ModelError) as err:
        Endpoint.parse({"port": port, "mac": "52:54:00:00:00:01", "eids": ["10.0.0.1"]}, "endpoint", 1)
    assert err.value.field == "endpoint.port" and words in err.value.problem, err.value


@pytest.mark.parametrize("port", ["vnet0", "x" * 15, "a.b", "...", ".x", "p%?#;&=+~!", "tap-0_a:b@c"])
def test_port_names_ovs_takes(port):
    assert Endpoint.parse({"port": port, "mac": "52:54:00:00:00:01", "eids": ["10.0.0.1"]}, "e", 1).port == port


@pytest.mark.parametrize("text", ["10.0.0.0/08", "10.1.0.0/016", "2001:db8::/032", "0.0.0.0/00", "10.1.1.1/032"])
def test_a_prefix_length_with_a_leading_zero_is_refused(text):
    with pytest.raises(ModelError, match="the prefix length has a leading zero"):
        Mapping.parse({"iid": 1, "eid": text})


def test_decimal_text_takes_ascii_digits_only():
    from lisp_controller.model import parse_decimal
    assert parse_decimal("1000", "iid", 0, IID_MAX) == 1000 and parse_decimal("007", "iid", 0, 9) == 7
    for text in ["\u0661\u0662", "1 000", " 5", "5 ", "1_000", "+5", "-1", "", "0x10", "5.0", "\u00b2", "9" * 5000]:
        with pytest.raises(ModelError) as err:
            parse_decimal(text, "iid", 0, IID_MAX)
        assert err.value.field == "iid"
    with pytest.raises(ModelError, match="between 0 and 16777215"):
        parse_decimal("16777216", "iid", 0, IID_MAX)


def test_a_json_key_given_twice_is_refused_not_overwritten():
    import json
    from lisp_controller.model import unique_keys
    assert json.loads('{"a": {"b": 1}, "c": [{"d": 2}]}', object_pairs_hook=unique_keys) == {"a": {"b": 1}, "c": [{"d": 2}]}
    for text, key in [('{"eid": "10.0.0.0/8", "eid": "10.9.0.0/16"}', "eid"),
                      ('{"mappings": [{"iid": 1, "rlocs": [{"address": "192.0.2.1", "address": "x"}]}]}', "address")]:
        with pytest.raises(ModelError) as err:
            json.loads(text, object_pairs_hook=unique_keys)
        assert err.value.field == key and "given twice" in err.value.problem


def test_an_endpoint_made_from_stored_values_can_be_checked():
    """A store written by an earlier version may hold what parse now refuses."""
    good = Endpoint.parse({"port": "p", "mac": "52:54:00:00:00:01", "eids": ["10.0.0.1"], "gateway": "10.0.0.254"}, "e", 1)
    good.check()
    legacy = Endpoint("a/b", "52:54:00:00:00:01", 1, (ipaddress.ip_address("10.0.0.1"),))
    with pytest.raises(ModelError, match="endpoint.port: 'a/b' contains '/'"):
        legacy.check()


def test_the_fast_rloc_ranges_agree_with_the_reasons():
    """parse_rloc_address tests a dotted quad with two range comparisons;
    they must accept exactly what _v4_problem finds nothing wrong with."""
    import random
    from lisp_controller.model import parse_rloc_address
    from lisp_controller.model.values import _v4_problem
    rnd = random.Random(3)
    edges = [e + d for e in (0, 1 << 24, 127 << 24, 128 << 24, 224 << 24, 240 << 24, 2**32 - 1)
             for d in (-1, 0, 1) if 0 <= e + d < 2**32]
    for n in edges + [rnd.randrange(2**32) for _ in range(5000)]:
        text = str(ipaddress.IPv4Address(n))
        if _v4_problem(n, True) is None:
            assert parse_rloc_address(text) == ipaddress.IPv4Address(n), text
        else:
            with pytest.raises(ModelError, match="an RLOC must be a unicast address"):
                parse_rloc_address(text)


def test_the_map_cache_keeps_its_mappings_out_of_the_collectors_sight():
    """Full collections walk every tracked object while the hub waits; a
    mapping and its prefix cannot be in a cycle, so the map-cache untracks
    them (model/untracked.py), and they are still freed when they go."""
    import gc
    import sys

    parsed = m(7, "10.8.0.0/16", "192.0.2.1")
    assert not gc.is_tracked(parsed) and not gc.is_tracked(parsed.eid)  # from birth: a bulk's are never walked
    cache = MapCache()
    mapping = Mapping(7, parse_prefix("10.9.0.0/16"), parsed.rlocs, source="api")
    assert gc.is_tracked(mapping) and gc.is_tracked(mapping.eid)  # what Python does by itself
    cache.add(mapping)
    assert not gc.is_tracked(mapping) and not gc.is_tracked(mapping.eid)
    assert cache.get(7, mapping.eid) is mapping
    held = sys.getrefcount(mapping)
    cache.remove(7, mapping.eid)
    assert sys.getrefcount(mapping) == held - 1  # reference counting still frees it
    # Whatever a mapping references keeps being tracked: cycles elsewhere are found.
    assert gc.is_tracked(mapping.rlocs)
