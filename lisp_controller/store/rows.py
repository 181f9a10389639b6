"""Mappings and endpoints as rows of plain values: the one format both
stores write (SQLite columns, etcd chunks) and read back.

A row holds strings and numbers only, so it can be compared, merged and
encoded without parsing. Thousands of mappings share one RLOC set, one
IID and one action: reading rows makes each once and the mappings share
it, which saves memory (a million mappings are loaded at start-up) and
time.
"""
from __future__ import annotations

import ipaddress
import json
from typing import Iterable, Iterator

from lisp_controller.model import ACTIONS, Endpoint, Mapping, Rloc, parse_prefix

# (iid, eid text, rlocs JSON text, ttl, action, expires)
MappingRow = tuple
# (bridge label, port, mac, iid, eids JSON text, gateway text or None)
EndpointRow = tuple

_RLOCS_JSON: dict[tuple, str] = {}  # thousands of mappings share an RLOC set


def rlocs_json(rlocs: tuple) -> str:
    text = _RLOCS_JSON.get(rlocs)
    if text is None:
        text = json.dumps([[str(r.address), r.priority, r.weight] for r in rlocs])
        if len(_RLOCS_JSON) > 65536:
            _RLOCS_JSON.clear()
        _RLOCS_JSON[rlocs] = text
    return text


def mapping_rows(mappings: Iterable[Mapping]) -> Iterator[MappingRow]:
    last = text = None
    for iid, eid, rlocs, ttl, action, _, expires in mappings:
        if rlocs is not last:  # mappings parsed from one request share one RLOC set
            last, text = rlocs, rlocs_json(rlocs)
        yield (iid, str(eid), text, ttl, action, expires)


def mappings_from_rows(rows: Iterable[MappingRow]) -> list[Mapping]:
    """API mappings from their rows, sharing RLOC sets, IIDs and actions."""
    rloc_sets: dict[str, tuple[Rloc, ...]] = {}
    iids: dict[int, int] = {}
    actions = {a: a for a in ACTIONS}
    out = []
    for iid, eid, rlocs, ttl, action, expires in rows:
        rloc_set = rloc_sets.get(rlocs)
        if rloc_set is None:
            rloc_set = rloc_sets[rlocs] = tuple(Rloc(ipaddress.ip_address(a), p, w)
                                                for a, p, w in json.loads(rlocs))
        out.append(Mapping(iids.setdefault(iid, iid), parse_prefix(eid), rloc_set, ttl,
                           actions.get(action, action), "api", expires))
    return out


def endpoint_row(bridge: str, ep: Endpoint) -> EndpointRow:
    return (bridge, ep.port, ep.mac, ep.iid, json.dumps([str(a) for a in ep.eids]),
            str(ep.gateway) if ep.gateway else None)


def endpoint_from_row(row: EndpointRow) -> tuple[str, Endpoint]:
    bridge, port, mac, iid, eids, gateway = row
    return bridge, Endpoint(port, mac, iid, tuple(ipaddress.ip_address(a) for a in json.loads(eids)),
                            ipaddress.ip_address(gateway) if gateway else None)
