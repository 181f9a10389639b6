import ipaddress

import pytest

from lisp_controller.model import (IID_MAX, Endpoint, MapCache, Mapping, ModelError, Rloc,
                                   parse_iid, parse_prefix)


def m(iid, eid, *rlocs, **kw):
    return Mapping.parse({"iid": iid, "eid": eid, "rlocs": list(rlocs), **kw})


def test_lpm_nested_prefixes():
    cache = MapCache([m(1, "10.0.0.0/8", "192.0.2.1"), m(1, "10.1.0.0/16", "192.0.2.2"),
                      m(1, "10.1.1.0/24", "192.0.2.3"), m(1, "10.1.1.7/32", "192.0.2.4")])
    rloc = lambda addr: str(cache.lookup(1, addr).best_rloc().address)
    assert rloc("10.1.1.7") == "192.0.2.4"
    assert rloc("10.1.1.8") == "192.0.2.3"
    assert rloc("10.1.2.1") == "192.0.2.2"
    assert rloc("10.200.0.1") == "192.0.2.1"
    assert cache.lookup(1, "11.0.0.1") is None


def test_default_route_and_removal():
    cache = MapCache([m(1, "0.0.0.0/0", "192.0.2.9"), m(1, "10.1.0.0/16", "192.0.2.2")])
    assert cache.lookup(1, "10.1.0.1").eid == ipaddress.ip_network("10.1.0.0/16")
    cache.remove(1, ipaddress.ip_network("10.1.0.0/16"))
    assert cache.lookup(1, "10.1.0.1").eid == ipaddress.ip_network("0.0.0.0/0")
    assert len(cache) == 1


def test_lpm_ipv6():
    cache = MapCache([m(7, "2001:db8::/32", "192.0.2.1"), m(7, "2001:db8:1::/48", "2001:db8:ff::1")])
    assert str(cache.lookup(7, "2001:db8:1::5").best_rloc().address) == "2001:db8:ff::1"
    assert str(cache.lookup(7, "2001:db8:2::5").best_rloc().address) == "192.0.2.1"
    assert cache.lookup(7, "10.0.0.1") is None  # an IPv4 address never matches IPv6 prefixes


def test_iid_isolation():
    cache = MapCache([m(100, "10.0.0.0/24", "192.0.2.1"), m(200, "10.0.0.0/24", "192.0.2.2")])
    assert str(cache.lookup(100, "10.0.0.5").best_rloc().address) == "192.0.2.1"
    assert str(cache.lookup(200, "10.0.0.5").best_rloc().address) == "192.0.2.2"
    assert cache.lookup(300, "10.0.0.5") is None


def test_best_rloc_priority_weight_and_unused():
    mapping = m(1, "10.0.0.0/8", {"address": "192.0.2.5", "priority": 2},
                {"address": "192.0.2.4", "priority": 1, "weight": 10},
                {"address": "192.0.2.3", "priority": 1, "weight": 90},
                {"address": "192.0.2.1", "priority": 0, "weight": 50})
    assert str(mapping.best_rloc().address) == "192.0.2.1"
    mapping = m(1, "10.0.0.0/8", {"address": "192.0.2.4", "priority": 1, "weight": 10},
                {"address": "192.0.2.3", "priority": 1, "weight": 90})
    assert str(mapping.best_rloc().address) == "192.0.2.3"
    unusable = m(1, "10.0.0.0/8", {"address": "192.0.2.1", "priority": 255}, action="drop")
    assert unusable.best_rloc() is None


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
    assert parse_prefix("10.1.1.20") == ipaddress.ip_network("10.1.1.20/32")
    assert Rloc.parse("2001:db8::1").address.version == 6


TRICKY = ["10.1.0.0/16", "10.1.1.1", "0.0.0.0/0", "10.1.1.1/24", "010.1.1.1/32", "10.1.1.0/33", "10.1.1.0/ 24",
          "1.2.3.4/032", "::/0", "2001:db8::/32", "10.1.1.0/-1", "1.2.3", "256.1.1.1/32", " 10.0.0.0/8",
          "10.0.0.0/8 ", "1.2.3.4/", "0x1.2.3.4/32", "1.2.3.4/32/1", "", "255.255.255.255/32"]


@pytest.mark.parametrize("text", TRICKY + [f"{a}.{b}.{c}.{d}/{p}" for a, b, c, d, p in
                                           [(10, 0, 0, 0, 8), (192, 168, 0, 0, 15), (172, 16, 7, 128, 25)]])
def test_fast_prefix_parsing_agrees_with_ipaddress(text):
    """The IPv4 fast path must accept and refuse exactly what ipaddress does."""
    try:
        expected = ipaddress.ip_network(text, strict=True)
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(ModelError):
            parse_prefix(text)
    else:
        assert parse_prefix(text) == expected


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


def test_lean_prefixes_behave_like_ipaddress_networks():
    for text in ("10.1.1.1/32", "10.1.1.0/31", "10.1.1.0/30", "0.0.0.0/0"):
        ours, theirs = parse_prefix(text), ipaddress.ip_network(text)
        assert ours == theirs and hash(ours) == hash(theirs) and str(ours) == str(theirs)
        if theirs.prefixlen >= 30:
            assert list(ours.hosts()) == list(theirs.hosts())
        assert "hosts" not in ours.__dict__
