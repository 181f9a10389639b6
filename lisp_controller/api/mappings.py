"""The map-cache's handlers of the REST API: one page of it listed,
filtered and sorted on the controller (controller/listing.py), a mapping
read, created, replaced or deleted, a lookup, and the bulk and replace
requests, whose bodies are read one mapping at a time (api/jsonstream.py).

`MappingHandlers` is a part of api/rest.py's `Api`: it uses the controller
(`ctl`), the body readers (`_body`, `_lists`, `_object`, `_iid`, `_key`),
`pause`, and `_apply_change` (api/idempotency.py).
"""
from __future__ import annotations

import functools
import ipaddress
import time

from webob import Request

from lisp_controller.api.answers import bool_param, int_param, iso, json_response
from lisp_controller.controller.slices import ms_since
from lisp_controller.api.jsonstream import ListOf
from lisp_controller.controller.listing import COUNTER_SORTS, SORTS, Query, select
from lisp_controller.controller.state import Change
from lisp_controller.errors import NotFound
from lisp_controller.model import Mapping, ModelError, parse_iid, parse_prefix
from lisp_controller.model.untracked import untrack

PAUSE_EVERY = 1000  # mappings read or listed between yields to the hub
SOURCES = ("config", "endpoint", "api")
# GET /v1/mappings: a page is at most LIMIT_MAX rows, so building and
# writing one never holds the hub long (docs/performance.rst, "A free hub").
LIMIT_DEFAULT, LIMIT_MAX = 1000, 10_000
LISTING_PARAMS = frozenset({"iid", "prefix", "source", "eid_contains", "rloc_contains", "q", "sort", "order",
                            "offset", "limit", "counters"})


def mapping_json(m: Mapping, now: float) -> dict:
    return {"iid": m.iid, "eid": str(m.eid),
            "rlocs": [{"address": str(r.address), "priority": r.priority, "weight": r.weight} for r in m.rlocs],
            "ttl": m.ttl, "action": m.action, "source": m.source,
            "expires_in": None if m.expires is None else max(0.0, round(m.expires - now, 1))}


class MappingHandlers:
    """Mappings: listed a page at a time, read, written, bulk, replace, lookup."""

    def list_mappings(self, req):
        """One page of the map-cache, filtered and sorted here, never in
        the client: the hub is not held however big the map-cache is
        (controller/listing.py); counters only for the rows returned."""
        query = self._listing_query(req)
        counters = bool_param(req, "counters")
        state = self.ctl.state
        snap = self.ctl.mapping_counters() if counters or query.sort in COUNTER_SORTS else None
        page = select(state.cache, query, self.pause, cookie_of=lambda m: state.mapping_cookie(m.key),
                      counts=snap.counts if snap is not None else None)
        now = state.clock()
        rows = []
        for i, m in enumerate(page.mappings):
            if i and i % PAUSE_EVERY == 0:
                self.pause()
            item = mapping_json(m, now)
            if counters:
                item["counters"] = self._counters(m, snap)
            rows.append(item)
        body = {"total": page.total, "in_map_cache": len(state.cache), "offset": query.offset,
                "limit": query.limit, "sort": query.sort, "order": "desc" if query.descending else "asc",
                "mappings": rows}
        if counters:
            body["counters_at"] = iso(snap.read_at)
        return json_response(body)

    def _listing_query(self, req: Request) -> Query:
        """The listing's query parameters, each checked: 400 naming the
        first one that is wrong (an unknown one too: a typo would
        otherwise list everything)."""
        unknown = sorted(set(req.GET) - LISTING_PARAMS)
        if unknown:
            raise ModelError(unknown[0], f"unknown query parameter; known: {', '.join(sorted(LISTING_PARAMS))}")
        get = req.GET.get
        iid = self._iid(get("iid")) if "iid" in req.GET else None
        within = parse_prefix(get("prefix"), "prefix") if "prefix" in req.GET else None
        source = get("source")
        if source is not None and source not in self._sources():
            raise ModelError("source", f"must be one of {', '.join(self._sources())}, got {source!r}")
        sort = get("sort", "prefix")
        if sort not in SORTS:
            raise ModelError("sort", f"must be one of {', '.join(SORTS)}, got {sort!r}")
        order = get("order", "asc")
        if order not in ("asc", "desc"):
            raise ModelError("order", f"must be asc or desc, got {order!r}")
        texts = {}
        for name in ("eid_contains", "rloc_contains", "q"):
            value = get(name)
            if value is not None and (len(value) > 200 or not value.isprintable()):
                raise ModelError(name, "must be at most 200 printable characters")
            texts[name] = value or None
        return Query(iid=iid, within=within, source=source, eid_text=texts["eid_contains"],
                     rloc_text=texts["rloc_contains"], words=tuple((texts["q"] or "").split()),
                     sort=sort, descending=order == "desc", offset=int_param(req, "offset", 0, 0),
                     limit=int_param(req, "limit", LIMIT_DEFAULT, 1, LIMIT_MAX))

    def _counters(self, m: Mapping, snap) -> dict | None:
        """The mapping's flow counters (packets and bytes, summed over the
        connected bridges; None when no bridge reported on it yet) and its
        traffic per RLOC. An RLOC
        set's traffic per RLOC is its select group's bucket counters: the
        group serves every mapping with that set (`group.mappings` says
        how many), so the RLOC counts are theirs together."""
        state = self.ctl.state
        c = snap.counts.get(state.mapping_cookie(m.key))
        if c is None:
            return None
        out: dict = {"packets": c[0], "bytes": c[1]}
        shares = m.rloc_shares()
        group = state.mapping_group(m.key) if len(shares) > 1 else None
        if group is None:  # one RLOC (or none): it carries the flow's traffic
            out["rlocs"] = [{"address": str(a), "weight": w, "packets": c[0], "bytes": c[1]} for a, w in shares]
            return out
        buckets = snap.buckets.get(group.group_id) or ((None, None),) * len(shares)
        out["rlocs"] = [{"address": str(a), "weight": w, "packets": p, "bytes": b}
                        for (a, w), (p, b) in zip(shares, buckets)]
        out["group"] = {"group_id": group.group_id, "mappings": state.shared.users(group.group_id)}
        return out

    def _sources(self) -> list[str]:
        """Owners a mapping can have here: the API's own, and what the LISP
        control plane learned (a site's registrations, Map-Replies)."""
        sites = self.ctl.mapping_system.server.sites if self.ctl.mapping_system is not None else {}
        return [*SOURCES, *(f"registered:{name}" for name in sites), "map-resolver"]

    def get_mapping(self, req, iid, eid):
        key = self._key(iid, eid)
        m = self.ctl.state.cache.get(*key)
        if m is None:
            raise NotFound("eid", f"no mapping for {key[0]}:{key[1]}")
        snap = self.ctl.mapping_counters()
        item = {**mapping_json(m, self.ctl.state.clock()), "counters": self._counters(m, snap)}
        return json_response({"mapping": item, "counters_at": iso(snap.read_at)})

    def create_mapping(self, req):
        m = Mapping.parse(self._body(req), "mapping", source="api")
        return self._apply_change(req, Change(put=[m], create_only=True), {"mapping": self._current(m)}, 201,
                            {"Location": f"/v1/mappings/{m.iid}/{m.eid}"})

    def put_mapping(self, req, iid, eid):
        key = self._key(iid, eid)
        raw = self._object(self._body(req), "mapping", {"iid", "eid", "rlocs", "ttl", "action"})
        if "iid" in raw and raw["iid"] != key[0]:
            raise ModelError("mapping.iid", f"{raw['iid']!r} does not match the URL ({key[0]})")
        if "eid" in raw and not _same_prefix(raw["eid"], key[1]):
            raise ModelError("mapping.eid", f"{raw['eid']!r} does not match the URL ({key[1]})")
        m = Mapping.parse({**raw, "iid": key[0], "eid": str(key[1])}, "mapping", source="api")
        existed = self.ctl.state.owner(key) is not None
        return self._apply_change(req, Change(put=[m]), {"mapping": self._current(m)}, 200 if existed else 201)

    def delete_mapping(self, req, iid, eid):
        key = self._key(iid, eid)
        m = self.ctl.state.cache.get(*key)
        deleted = mapping_json(m, self.ctl.state.clock()) if m is not None else None
        return self._apply_change(req, Change(delete=[key]), {"deleted": deleted})

    def bulk_mappings(self, req):
        started = time.monotonic()
        body = self._lists(req, {"mappings": MAPPINGS, "delete": DELETES})
        put, delete = body.get("mappings", []), body.get("delete", [])
        timings = {"read_ms": ms_since(started)}  # decoded and checked, one mapping at a time
        return self._apply_change(req, Change(put=put, delete=delete),
                                  {"put": len(put), "deleted": len(delete), "timings": timings}, timings=timings)

    def replace_mappings(self, req):
        started = time.monotonic()
        body = self._lists(req, {"mappings": MAPPINGS})
        if "mappings" not in body:
            raise ModelError("mappings", "is required (the complete set of API mappings)")
        put = body["mappings"]
        timings = {"read_ms": ms_since(started)}
        before = self.ctl.state.cache.sources().get("api", 0)
        return self._apply_change(req, Change(put=put, replace_api=True),
                                  {"mappings": len(put), "before": before, "timings": timings}, timings=timings)

    def lookup(self, req):
        if "eid" not in req.GET or "iid" not in req.GET:
            raise ModelError("eid" if "eid" not in req.GET else "iid", "query parameters iid and eid are required")
        iid = self._iid(req.GET["iid"])
        try:
            address = ipaddress.ip_address(req.GET["eid"])
        except ValueError:
            raise ModelError("eid", f"{req.GET['eid']!r} is not an IPv4 or IPv6 address") from None
        m = self.ctl.state.cache.lookup(iid, address)
        body = {"iid": iid, "eid": str(address),
                "mapping": None if m is None else mapping_json(m, self.ctl.state.clock())}
        if m is None:
            body["miss_action"] = self.ctl.state.config.overlay.miss_action
        return json_response(body)

    def _current(self, m: Mapping) -> dict:
        return mapping_json(self.ctl.state.cache.get(*m.key) or m, self.ctl.state.clock())


def _same_prefix(text: object, prefix) -> bool:
    try:
        return parse_prefix(text) == prefix
    except ModelError:
        return False


def _delete_key(item: object, field: str) -> tuple:
    """A key to delete, {iid, eid}; kept out of the collector's sight as
    a mapping is (model/untracked.py): a bulk may delete a million."""
    if not isinstance(item, dict):
        raise ModelError(field, "must be a JSON object")
    unknown = sorted(set(item) - {"iid", "eid"})
    if unknown:
        raise ModelError(f"{field}.{unknown[0]}", "unknown field")
    key = (parse_iid(item.get("iid"), f"{field}.iid"), parse_prefix(item.get("eid"), f"{field}.eid"))
    untrack(key[1])
    untrack(key)
    return key


# The list members of the bulk and replace requests, read item by item.
MAPPINGS = ListOf(functools.partial(Mapping.parse, source="api"), "must be a list of mappings")
DELETES = ListOf(_delete_key, "must be a list of {iid, eid}")
