"""api/jsonstream.py: a bulk body read one mapping at a time gives what
decoding it whole and checking it gives, the same values or the same
error, for good bodies and broken ones, wherever its pieces are cut; and
the tree of the whole body is never alive at once."""
from __future__ import annotations

import functools
import gc
import json
import random

import pytest

from lisp_controller.api import jsonstream
from lisp_controller.api.jsonstream import ListOf, decode, read_object
from lisp_controller.api.mappings import DELETES, MAPPINGS
from lisp_controller.controller.slices import Slices
from lisp_controller.model import Mapping, ModelError

LISTS = {"mappings": MAPPINGS, "delete": DELETES}


def reference(data: bytes, lists: dict[str, ListOf]) -> dict:
    """What the API did before: decode the whole body, check its members,
    then parse each list in the order named."""
    value = decode(data)
    if not isinstance(value, dict):
        raise ModelError(None, "must be a JSON object")
    unknown = sorted(set(value) - set(lists))
    if unknown:
        raise ModelError(unknown[0], "unknown field")
    out = {}
    for name, how in lists.items():
        if name in value:
            if not isinstance(value[name], list):
                raise ModelError(name, how.problem)
            out[name] = [how.parse(item, f"{name}[{i}]") for i, item in enumerate(value[name])]
    return out


def outcome(read, data: bytes):
    try:
        return "ok", read(data)
    except ModelError as e:
        return "error", e.field, e.problem


def streamed(data: bytes, lists=LISTS) -> dict:
    return read_object(data, lists.keys(), lists, whole=functools.partial(decode, data))


def _body(n: int, rnd: random.Random) -> str:
    mappings = [{"iid": 1000, "eid": f"10.{i // 256}.{i % 256}.0/24",
                 "rlocs": rnd.choice([["192.0.2.1"], [{"address": "192.0.2.2", "priority": 1, "weight": 50}], []]),
                 **rnd.choice([{}, {"ttl": 5}, {"action": "drop"}])} for i in range(n)]
    delete = [{"iid": 1000, "eid": f"10.99.{i}.0/24"} for i in range(rnd.randrange(3))]
    members = [("mappings", mappings), ("delete", delete)]
    rnd.shuffle(members)
    spaces = rnd.choice(["", " ", "\n  ", "\t"])
    return json.dumps(dict(members), indent=rnd.choice([None, 2]),
                      separators=rnd.choice([(",", ":"), (", ", ": "), (spaces + "," + spaces, ":" + spaces)]))


BROKEN = [
    b"", b"{", b"}", b"[]", b"3", b'"x"', b"{}", b"{} x", b'{"mappings": []', b'{"mappings": [}', b'{"mappings": [,]}',
    b'{"mappings": [1,]}', b'{"mappings": [1 2]}', b'{"mappings" []}', b'{mappings: []}', b'{"mappings": [], }',
    b'{"mappings": {}}', b'{"mappings": "x"}', b'{"mappings": null}', b'{"mappings": [1.5e1000]}',
    b'{"mappings": [], "delete": [], "mappings": []}', b'{"mappings": [], "extra": 1, "more": 2}',
    b'{"mappings": [{"iid": 1, "eid": "10.0.0.0/8", "eid": "10.1.0.0/16"}]}', b'{"mappings": [NaN, -Infinity]}',
    b'{"mappings": [{"iid": 1, "eid": "10.0.0.0/8"}, {"iid": 1, "eid": "bad"}, {"iid": 1, "eid": "worse"}]}',
    b'{"delete": [{"iid": 1}], "mappings": [{"iid": 1, "eid": "bad"}]}', b'{"delete": [7], "mappings": []}',
    b'{"delete": [{"iid": 1, "eid": "10.0.0.0/8", "x": 1}]}', b'{"mappings": [{"iid": 1, "eid": "bad"}], "x": 1}',
    b'{"mappings": [{"iid": 1, "eid": "bad"}], "delete": [}', b'\xef\xbb\xbf{"mappings": []}',
    b'{"mappings": ["\xff"]}',
    b'{"mappings": [123456789', b'{"mappings": [1] } ', b'  {"mappings"  :  [ ]  }  ', b'{"mappings": [[' * 3000,
    '{"mappings": [{"iid": 1, "eid": "10.0.0.0/8", "action": "dr\u00f6p"}]}'.encode("utf-16"),
]


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 64, jsonstream.PIECE])
def test_a_body_read_item_by_item_equals_one_decoded_whole(piece, monkeypatch):
    monkeypatch.setattr(jsonstream, "PIECE", piece)  # small pieces: every cut lands somewhere new
    rnd = random.Random(piece)
    bodies = [_body(rnd.randrange(6), rnd).encode() for _ in range(20)] + BROKEN
    for good in bodies[:20]:  # and broken ones: a byte gone, changed or added anywhere
        for _ in range(8):
            at = rnd.randrange(len(good) + 1)
            bodies.append(rnd.choice([good[:at] + good[at + 1:], good[:at] + bytes([rnd.choice(b'{}[],:" 1ae\\')])
                                      + good[at + 1:], good[:at] + b",]" + good[at:]]))
    for data in bodies:
        if not data:
            continue  # the API refuses an empty body before reading it
        want, got = outcome(functools.partial(reference, lists=LISTS), data), outcome(streamed, data)
        assert got == want, data


def test_a_replacement_reads_its_one_list_the_same_way():
    for data in (b'{"mappings": [], "delete": []}', b'{"mappings": [{"iid": 1, "eid": "10.0.0.0/8"}]}', b"{}"):
        lists = {"mappings": MAPPINGS}
        assert outcome(functools.partial(streamed, lists=lists), data) == \
            outcome(functools.partial(reference, lists=lists), data)


def test_the_whole_tree_is_never_alive_and_the_hub_is_let_go_between_slices():
    """While a body of N mappings is read, the tracked objects grow by
    what the young generation holds, not by N: each item's dict and list
    go as soon as it is a Mapping (untracked), and the list of them is
    untracked. The pause comes every `most` items."""
    n = 20_000
    data = json.dumps({"mappings": [{"iid": 7, "eid": f"10.{i // 256 % 256}.{i % 256}.0/24",
                                     "rlocs": ["192.0.2.9"]} for i in range(n)]}).encode()
    gc.collect()
    before = len(gc.get_objects())
    grew, items = [], []
    parse = MAPPINGS.parse

    def counting(item, field):
        items.append(None)
        return parse(item, field)

    def pause():
        grew.append(len(gc.get_objects()) - before)
    lists = {"mappings": ListOf(counting, MAPPINGS.problem)}
    out = read_object(data, lists.keys(), lists, whole=lambda: pytest.fail("decoded whole"),
                      slices=Slices(pause, most=1000, clock=lambda: 0.0))
    assert len(out["mappings"]) == n and all(type(m) is Mapping for m in out["mappings"])
    assert len(grew) == n // 1000 and max(grew) < 2000, grew  # a million would be 2,000,000
    assert not gc.is_tracked(out["mappings"])
    whole = decode(data)  # for comparison: the tree holds two tracked objects per mapping
    assert len(gc.get_objects()) - before > 2 * n
    del whole


def test_a_bad_item_stops_the_parsing_but_the_rest_must_still_be_json():
    parsed = []
    lists = {"mappings": ListOf(lambda item, field: parsed.append(item) or Mapping.parse(item, field),
                                MAPPINGS.problem)}
    good = {"iid": 1, "eid": "10.0.0.0/8"}
    data = json.dumps({"mappings": [good, {"iid": 1, "eid": "bad"}, good, good]}).encode()
    with pytest.raises(ModelError) as e:
        read_object(data, lists.keys(), lists, whole=functools.partial(decode, data))
    assert (e.value.field, len(parsed)) == ("mappings[1].eid", 2)
    with pytest.raises(ModelError, match="not valid JSON"):
        broken = data[:-2]  # the list and the object never close
        read_object(broken, lists.keys(), lists, whole=functools.partial(decode, broken))
