"""The REST API: JSON over HTTP (webob on eventlet's WSGI server), under /v1.

HTTP in, `Change` out: this module turns requests into checked model
values and hands them to the controller's `apply_change`, which stores them and
waits for the bridges. Every error is a JSON body naming the field and the
problem; nothing a client sends can produce a traceback. The layers below
raise the controller's own errors (`lisp_controller/errors.py`); what each
means in HTTP is decided here, in `ERROR_STATUS`, and nowhere else.
"""
from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import logging
import re
import time
from typing import Callable, Iterable, Iterator

from webob import Request, Response

from lisp_controller.config import ApiSettings
from lisp_controller.controller.offhub import BIG_BYTES, off_hub
from lisp_controller.controller.slices import Slices
from lisp_controller.pipeline.flows import render_group
from lisp_controller.model import (IID_MAX, Endpoint, Mapping, ModelError, parse_decimal, parse_iid, parse_prefix,
                                   refers_to)
from lisp_controller.model.untracked import untrack
from lisp_controller.api.guard import Forbidden, Guard, Refused, Unauthorized
from lisp_controller.api.jsonstream import ListOf, decode, read_object
from lisp_controller.api.metrics import CONTENT_TYPE as METRICS_TYPE
from lisp_controller.api.openapi import document
from lisp_controller.api.static import SECURITY_HEADERS, load as load_assets
from lisp_controller.controller.listing import COUNTER_SORTS, SORTS, Query, select
from lisp_controller.controller.state import Change
from lisp_controller.errors import Conflict, LispControllerError, NotFound
from lisp_controller.store import Request as Recorded, StoreError

LOG = logging.getLogger("lisp_controller.api.rest")
PAUSE_EVERY = 1000  # parsed mappings between yields to the hub
WRITE_PARTS = 1000  # flows written to the client at once
SOURCES = ("config", "endpoint", "api")
KEY_HEADER = "Idempotency-Key"
# GET /v1/mappings: a page is at most LIMIT_MAX rows, so building and
# writing one never holds the hub long (docs/performance.rst, "A free hub").
LIMIT_DEFAULT, LIMIT_MAX = 1000, 10_000
LISTING_PARAMS = frozenset({"iid", "prefix", "source", "eid_contains", "rloc_contains", "q", "sort", "order",
                            "offset", "limit", "counters"})
_KEY = re.compile(r"^[A-Za-z0-9._:~+=-]{1,200}$")  # a UUID, a ULID, a name of the client's

# (method, path template, handler name). The OpenAPI document is checked
# against this table by the tests.
ROUTES = [
    ("GET", "/", "page"),
    ("GET", "/static/{asset}", "asset"),
    ("GET", "/v1/health", "health"),
    ("GET", "/metrics", "metrics"),
    ("GET", "/v1/debug/resources", "resources"),
    ("GET", "/v1/openapi.json", "openapi"),
    ("GET", "/v1/mappings", "list_mappings"),
    ("POST", "/v1/mappings", "create_mapping"),
    ("PUT", "/v1/mappings", "replace_mappings"),
    ("POST", "/v1/mappings/bulk", "bulk_mappings"),
    ("GET", "/v1/mappings/{iid}/{eid}", "get_mapping"),
    ("PUT", "/v1/mappings/{iid}/{eid}", "put_mapping"),
    ("DELETE", "/v1/mappings/{iid}/{eid}", "delete_mapping"),
    ("GET", "/v1/lookup", "lookup"),
    ("GET", "/v1/endpoints", "list_endpoints"),
    ("POST", "/v1/endpoints", "add_endpoint"),
    ("DELETE", "/v1/endpoints/{bridge}/{port}", "delete_endpoint"),
    ("GET", "/v1/datapaths", "list_datapaths"),
    ("GET", "/v1/datapaths/{bridge}", "get_datapath"),
    ("GET", "/v1/datapaths/{bridge}/flows", "datapath_flows"),
    ("GET", "/v1/instances", "list_instances"),
    ("GET", "/v1/requests/{key}", "get_request"),
    ("GET", "/v1/sites", "list_sites"),
    ("GET", "/v1/sites/{site}", "get_site"),
    ("GET", "/v1/lisp", "lisp_control_plane"),
]
NEEDS_TOKEN = {"resources"}  # reads that need the token too: they show how the process is doing inside


def _compile_route(template: str) -> re.Pattern:
    # {eid} is a prefix and keeps its slash (10.2.0.0/16); so does a {port},
    # the last part of its URL: names with '/' are refused today, but a store
    # written by an earlier version may hold one, and it must stay deletable.
    pattern = re.sub(r"\{(\w+)\}", lambda m: f"(?P<{m.group(1)}>.+)" if m.group(1) in ("eid", "port")
                     else f"(?P<{m.group(1)}>[^/]+)", template)
    return re.compile(f"^{pattern}$")


_COMPILED = [(method, _compile_route(path), name) for method, path, name in ROUTES]


# -- errors of the HTTP layer, and the one table of statuses ---------------------

class MethodNotAllowed(Refused):
    pass


class PayloadTooLarge(Refused):
    pass


class UnsupportedMediaType(Refused):
    pass


class BadFraming(Refused):
    """The body cannot be read as HTTP frames it (a malformed chunk): the
    connection is closed after the answer, as nothing after it can be trusted."""

    def __init__(self, message: str):
        super().__init__(None, message, {"Connection": "close"})


class KeyReused(Refused):
    """An Idempotency-Key sent again with another request."""


class KeyInProgress(Conflict):
    """An Idempotency-Key whose first request is still being answered."""


# Status by kind of error, most specific first; anything else is a bug: 500.
ERROR_STATUS: list[tuple[type, int]] = [
    (BadFraming, 400),
    (ModelError, 400),
    (Unauthorized, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (MethodNotAllowed, 405),
    (Conflict, 409),
    (PayloadTooLarge, 413),
    (UnsupportedMediaType, 415),
    (KeyReused, 422),
    (StoreError, 503),
]


def status_of(error: Exception) -> int:
    return next((status for kind, status in ERROR_STATUS if isinstance(error, kind)), 500)


def json_response(body: object, status: int = 200, headers: dict | None = None) -> Response:
    resp = Response(status=status, content_type="application/json", charset="utf-8")
    resp.text = json.dumps(body, separators=(",", ":"))
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def error_response(status: int, field: str | None, message: str, headers: dict | None = None) -> Response:
    return json_response({"error": {"status": status, "field": field, "message": message}}, status, headers)


def mapping_json(m: Mapping, now: float) -> dict:
    return {"iid": m.iid, "eid": str(m.eid),
            "rlocs": [{"address": str(r.address), "priority": r.priority, "weight": r.weight} for r in m.rlocs],
            "ttl": m.ttl, "action": m.action, "source": m.source,
            "expires_in": None if m.expires is None else max(0.0, round(m.expires - now, 1))}


def endpoint_json(label: str, ep: Endpoint, source: str) -> dict:
    return {"bridge": label, "port": ep.port, "mac": ep.mac, "iid": ep.iid,
            "eids": [str(a) for a in ep.eids], "gateway": str(ep.gateway) if ep.gateway else None,
            "source": source}


class Api:
    """A WSGI application around a controller that offers `state`,
    `apply_change(change)`, `wait_confirmed()`, `store`, `store_error`, `membership`,
    `metrics`, `datapaths()`, `bridge_flows()` and `mapping_counters()`;
    it also serves the status page."""

    def __init__(self, controller, token: str | None, settings: ApiSettings,
                 pause: Callable[[], None] = lambda: None):
        self.ctl = controller
        self.guard = Guard(token, settings.host)
        self.settings = settings
        self.max_body = settings.max_body_bytes
        self.pause = pause
        self.assets = load_assets()
        self.started = time.monotonic()
        self.in_flight: set[str] = set()  # Idempotency-Keys being answered now

    # -- WSGI --------------------------------------------------------------
    def __call__(self, environ, start_response):
        req = Request(environ)
        started = time.monotonic()
        try:
            resp = self._dispatch(req)
        except LispControllerError as e:
            status = status_of(e)
            message = e.message
            if isinstance(e, StoreError):
                LOG.error("%s %s: %s", req.method, req.path, e)
                message += "; nothing was changed"
            elif status == 500:
                LOG.error("%s %s failed: %s", req.method, req.path, e)
                message = "internal error; the controller log has the details"
            resp = error_response(status, e.field, message, getattr(e, "headers", None))
        except Exception:  # never a traceback to the client; all of it in the log
            LOG.exception("%s %s failed", req.method, req.path)
            resp = error_response(500, None, "internal error; the controller log has the details")
        self.ctl.metrics.observe_api(req.method, resp.status_int, time.monotonic() - started)
        return resp(environ, start_response)

    def _dispatch(self, req: Request) -> Response:
        self.guard.check_host(req)
        path = req.path_info
        allowed = []
        for method, pattern, name in _COMPILED:
            m = pattern.match(path)
            if m is None:
                continue
            if method != req.method:
                allowed.append(method)
                continue
            handler = getattr(self, name)
            if method == "GET":
                if name in NEEDS_TOKEN:
                    self.guard.authorize(req, "this view")
                return handler(req, **m.groupdict())
            self.guard.check_same_origin(req)
            self.guard.authorize(req)
            if _has_body(req) and req.content_type != "application/json":
                raise UnsupportedMediaType("Content-Type", f"expected application/json, got {req.content_type}")
            key = req.headers.get(KEY_HEADER)
            if key is not None:
                return self._once(req, key, lambda: handler(req, **m.groupdict()))
            return handler(req, **m.groupdict())
        if allowed:
            raise MethodNotAllowed(None, f"method {req.method} not allowed here; use {', '.join(allowed)}",
                                   {"Allow": ", ".join(allowed)})
        raise NotFound(None, f"no such resource: {path}")

    # -- reading the body --------------------------------------------------
    def _raw_body(self, req: Request) -> bytes:
        """The body's bytes, refused with 413 before they are read if the
        declared length is too big, or as soon as a chunked one passes the
        limit. Read once; kept in the environ for the handler."""
        cached = req.environ.get("lisp.body")
        if cached is not None:
            return cached
        length = req.content_length
        if length is not None and length > self.max_body:
            raise PayloadTooLarge(None, f"body of {length} bytes exceeds the limit of {self.max_body} bytes")
        stream = req.environ["wsgi.input"]
        try:
            if length is not None:
                data = stream.read(length)
            else:  # chunked: read no more than the limit
                parts, total = [], 0
                while True:
                    chunk = stream.read(min(65536, self.max_body + 1 - total))
                    if not chunk:
                        break
                    parts.append(chunk)
                    total += len(chunk)
                    if total > self.max_body:
                        raise PayloadTooLarge(None, f"body exceeds the limit of {self.max_body} bytes")
                data = b"".join(parts)
        except ValueError as e:  # eventlet's ChunkReadError: a chunk size that is not hexadecimal...
            raise BadFraming(f"malformed chunked body: {e}") from None
        except OSError as e:  # the client stalled or went away midway
            raise BadFraming(f"the body stopped before its end: {e}") from None
        if length is not None and len(data) < length:
            raise BadFraming(f"the body ended after {len(data)} of {length} bytes")
        req.environ["lisp.body"] = data
        return data

    def _body(self, req: Request) -> object:
        """The JSON body, decoded whole (off the hub if it is big)."""
        data = self._raw_body(req)
        if not data:
            raise ModelError(None, "a JSON body is required")
        return off_hub(len(data) >= BIG_BYTES, decode, data)

    def _lists(self, req: Request, lists: dict[str, ListOf]) -> dict[str, object]:
        """A JSON object body of list members only, read one item at a
        time, the hub let go between slices of items: the whole tree of a
        million mappings is never built (api/jsonstream.py). Its errors
        are those of `_body` and of checking what it returns."""
        data = self._raw_body(req)
        if not data:
            raise ModelError(None, "a JSON body is required")
        return read_object(data, lists.keys(), lists, whole=lambda: self._body(req),
                           slices=Slices(self.pause, most=PAUSE_EVERY))

    def _object(self, value: object, field: str, allowed: set[str]) -> dict:
        if not isinstance(value, dict):
            raise ModelError(field or None, "must be a JSON object")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ModelError(f"{field}.{unknown[0]}" if field else unknown[0], "unknown field")
        return value

    def _iid(self, text: str) -> int:
        """An IID from a URL or query string."""
        return parse_decimal(text, "iid", 0, IID_MAX)

    def _key(self, iid: str, eid: str) -> tuple:
        return (self._iid(iid), parse_prefix(eid, "eid"))

    # -- changes, once -----------------------------------------------------
    def _apply_change(self, req: Request, change: Change, body: dict, status: int = 200,
                headers: dict | None = None, timings: dict | None = None) -> Response:
        """Commit `change` and answer `body` with the bridges' results. A
        request with an Idempotency-Key is recorded with the change, in its
        transaction, and its complete answer once the bridges confirmed."""
        key = req.environ.get("lisp.key")
        if key is not None:
            change.request = Recorded(key, req.method, req.path_qs, req.environ["lisp.fingerprint"], status,
                                      json.dumps(headers or {}), json.dumps(body), time.time())
        instances: list[dict] = []
        body["bridges"] = self.ctl.apply_change(change, timings=timings, instances=instances)
        if self.ctl.store is not None and self.ctl.store.seq is not None:  # a store shared with others
            body["instances"] = instances
        if key is not None:
            try:
                self.ctl.store.record_answer(key, json.dumps(body))
            except StoreError as e:  # the change is committed; a replay reports the bridges anew
                LOG.error("request %s: its answer is not recorded: %s", key, e)
        return json_response(body, status, headers)

    def _once(self, req: Request, key: str, handle: Callable[[], Response]) -> Response:
        """Answer a write sent with an Idempotency-Key: the first time by
        `handle`, afterwards from the record of what it did."""
        if not _KEY.match(key):
            raise ModelError(KEY_HEADER, "must be 1 to 200 letters, digits or ._:~+=- (a UUID will do)")
        body = self._raw_body(req)
        digest = hashlib.sha256(b"%s %s\n" % (req.method.encode(), req.path_qs.encode()))
        # hashlib lets the interpreter lock go: a 70 MB body hashes on a
        # native thread without holding the hub (70 ms for 66 MB here,
        # with the copy a concatenation made).
        off_hub(len(body) >= BIG_BYTES, digest.update, body)
        fingerprint = digest.hexdigest()
        if key in self.in_flight:
            raise KeyInProgress(KEY_HEADER, f"the request with key {key} is still being answered; "
                                f"GET /v1/requests/{key} says when it is done")
        recorded = self._recorded(key)
        if recorded is not None:
            if recorded.fingerprint != fingerprint:
                raise KeyReused(KEY_HEADER, f"key {key} was used for another request ({recorded.method} "
                                f"{recorded.path}, or another body); a new request needs a new key")
            LOG.info("request %s: %s %s sent again; answered from its record", key, req.method, req.path)
            return self._replay(recorded)
        req.environ["lisp.key"], req.environ["lisp.fingerprint"] = key, fingerprint
        self.in_flight.add(key)
        try:
            return handle()
        finally:
            self.in_flight.discard(key)

    def _recorded(self, key: str) -> Recorded | None:
        return self.ctl.store.request(key) if self.ctl.store is not None else None

    def _replay(self, recorded: Recorded) -> Response:
        body = json.loads(recorded.body)
        if not recorded.answered:  # committed, but the controller stopped before it answered
            body["bridges"] = self.ctl.wait_confirmed(self.ctl.state.generation, self.settings.confirm_timeout)
        return json_response(body, recorded.status, {**json.loads(recorded.headers), "Idempotent-Replayed": "true"})

    def get_request(self, req, key):
        if key in self.in_flight:
            return json_response({"key": key, "state": "in-progress"})
        recorded = self._recorded(key)
        if recorded is None:
            raise NotFound("key", f"no request with key {key} was committed (in the last 24 hours): it "
                           "changed nothing, and sending it again is safe")
        return json_response({
            "key": key, "state": "committed", "method": recorded.method, "path": recorded.path,
            "status": recorded.status, "answered": recorded.answered,
            "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(recorded.created)),
            "response": json.loads(recorded.body)})


    # -- system ------------------------------------------------------------
    def health(self, req):
        """200 when the controller does its job; 503 with the reasons when
        its store cannot be written, when it shares an etcd store and holds
        no live lease (it drives no bridge then: docs/etcd.rst), or when
        none of the configured bridges is connected once `health_grace`
        seconds have passed since start."""
        st = self.ctl.state
        connected = sum(1 for d in self.ctl.datapaths() if d["configured"] and d["connected"])
        problems = []
        if self.ctl.store_error:
            problems.append(self.ctl.store_error)
        membership = self.ctl.membership
        lease = membership.lease_problem() if membership is not None else None
        if lease:
            problems.append(lease)
        grace = self.settings.health_grace
        if st.bridges and not connected and time.monotonic() - self.started >= grace:
            problems.append(f"none of the {len(st.bridges)} configured bridges is connected "
                            f"({grace:g} s after start)")
        return json_response({"status": "failing" if problems else "ok", "problems": problems,
                              "store_error": self.ctl.store_error, "lease_problem": lease,
                              "mappings": len(st.cache),
                              "datapaths_configured": len(st.bridges), "datapaths_connected": connected},
                             503 if problems else 200)

    def metrics(self, req):
        resp = Response(content_type="text/plain", charset="utf-8")
        resp.text = self.ctl.metrics.render()
        resp.headers["Content-Type"] = METRICS_TYPE
        return resp

    def resources(self, req):
        return json_response(self.ctl.resources())

    def openapi(self, req):
        return json_response(document(ROUTES))

    # -- the status page -------------------------------------------------------
    def page(self, req):
        return self._asset(req, "index.html")

    def asset(self, req, asset):
        if asset == "index.html" or asset not in self.assets:
            raise NotFound("asset", f"no such file: {asset}")
        return self._asset(req, asset)

    def _asset(self, req: Request, name: str) -> Response:
        a = self.assets[name]
        if a.etag in req.if_none_match:
            resp = Response(status=304)
        else:
            resp = Response(body=a.body, content_type=a.content_type,
                            charset="utf-8" if a.content_type.startswith("text/") else None)
        resp.etag = a.etag
        resp.cache_control = "no-cache"  # revalidate: an upgraded controller serves its own page
        for k, v in SECURITY_HEADERS.items():
            resp.headers[k] = v
        return resp

    # -- mappings ----------------------------------------------------------
    def list_mappings(self, req):
        """One page of the map-cache, filtered and sorted here, never in
        the client: the hub is not held however big the map-cache is
        (controller/listing.py); counters only for the rows returned."""
        query = self._listing_query(req)
        counters = _bool_param(req, "counters")
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
            body["counters_at"] = _iso(snap.read_at)
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
                     sort=sort, descending=order == "desc", offset=_int_param(req, "offset", 0, 0),
                     limit=_int_param(req, "limit", LIMIT_DEFAULT, 1, LIMIT_MAX))

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
        return json_response({"mapping": item, "counters_at": _iso(snap.read_at)})

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
        timings = {"read_ms": _ms(started)}  # decoded and checked, one mapping at a time
        return self._apply_change(req, Change(put=put, delete=delete),
                                  {"put": len(put), "deleted": len(delete), "timings": timings}, timings=timings)

    def replace_mappings(self, req):
        started = time.monotonic()
        body = self._lists(req, {"mappings": MAPPINGS})
        if "mappings" not in body:
            raise ModelError("mappings", "is required (the complete set of API mappings)")
        put = body["mappings"]
        timings = {"read_ms": _ms(started)}
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

    # -- endpoints -------------------------------------------------------------
    def list_endpoints(self, req):
        st = self.ctl.state
        want = req.GET.get("bridge")
        label = None if want is None else self._configured_bridge(want, "bridge").label
        out = []
        for bridge in st.bridges.values():
            if label is not None and bridge.label != label:
                continue
            for ep in bridge.endpoints:
                source = "api" if (bridge.label, ep.port) in st.api_endpoints else "config"
                out.append(endpoint_json(bridge.label, ep, source))
        return json_response({"endpoints": out})

    def add_endpoint(self, req):
        raw = self._object(self._body(req), "endpoint", {"bridge", "port", "mac", "iid", "eids", "gateway"})
        ref = raw.get("bridge")
        if not isinstance(ref, str):
            raise ModelError("endpoint.bridge", "is required (bridge label, name or datapath ID)")
        bridge = self._configured_bridge(ref, "endpoint.bridge")
        ep = Endpoint.parse({k: v for k, v in raw.items() if k != "bridge"}, "endpoint", None)
        return self._apply_change(req, Change(put_endpoints=[(bridge.label, ep)]),
                            {"endpoint": endpoint_json(bridge.label, ep, "api")}, 201)

    def delete_endpoint(self, req, bridge, port):
        b = self._configured_bridge(bridge, "bridge")
        return self._apply_change(req, Change(delete_endpoints=[(b.label, port)]),
                            {"deleted": {"bridge": b.label, "port": port}})

    # -- LISP control plane ------------------------------------------------------
    def lisp_control_plane(self, req):
        xtr = getattr(self.ctl, "xtr", None)
        return json_response({"enabled": False} if xtr is None else {"enabled": True, **xtr.view()})

    # -- datapaths -------------------------------------------------------------
    def list_datapaths(self, req):
        return json_response({"datapaths": self.ctl.datapaths(), "conflicts": self.ctl.conflicts()})

    def list_instances(self, req):
        return json_response(self.ctl.instances())

    def _datapath(self, ref: str, field: str = "bridge", configured: bool = False) -> dict:
        """The one bridge, configured or connected, that `ref` names: its
        label, its name (from the config or the switch) or its datapath ID.
        A name two bridges share is refused (409), never guessed."""
        found = [d for d in self.ctl.datapaths() if refers_to(
            ref, d["bridge"], d["name"], None if d["datapath_id"] is None else int(d["datapath_id"], 16))]
        if len(found) > 1:
            raise Conflict(field, f"ambiguous: {ref!r} names {len(found)} bridges "
                           f"({', '.join(d['bridge'] for d in found)}); use the datapath ID")
        if not found or (configured and not found[0]["configured"]):
            raise NotFound(field, f"no bridge {ref!r} in the config" if configured
                           else f"no datapath {ref!r} (configured or connected)")
        return found[0]

    def _configured_bridge(self, ref: str, field: str):
        return self.ctl.state.bridge(self._datapath(ref, field, configured=True)["bridge"])

    def get_datapath(self, req, bridge):
        return json_response({"datapath": self._datapath(bridge)})

    def datapath_flows(self, req, bridge):
        d = self._datapath(bridge)
        form = req.GET.get("format", "json")
        if form not in ("json", "text"):
            raise ModelError("format", f"must be json or text, got {form!r}")
        # Made and written a slice at a time: a million flows never hold
        # the hub (controller/flowlist.py).
        listed = self.ctl.bridge_flows(d["bridge"], self.pause) if d["configured"] else None
        lines = listed.lines() if listed is not None else iter(())
        if form == "text":
            return Response(content_type="text/plain", charset="utf-8",
                            app_iter=_written("", (line + "\n" for line in lines), ""))
        groups = [render_group(g) for _, g in sorted(listed.groups.items())] if listed is not None else []
        head = '{"bridge":%s,"connected":%s,"flows":[' % (json.dumps(d["bridge"]), json.dumps(d["connected"]))
        tail = '],"groups":%s}' % json.dumps(groups, separators=(",", ":"))
        return Response(content_type="application/json", charset="utf-8",
                        app_iter=_written(head, map(json.dumps, lines), tail, ","))

    # -- sites (the Map-Server's) ----------------------------------------------
    def list_sites(self, req):
        system = self.ctl.mapping_system
        return json_response({"sites": system.sites() if system is not None else []})

    def get_site(self, req, site):
        system = self.ctl.mapping_system
        view = system.site(site) if system is not None else None
        if view is None:
            raise NotFound("site", f"no site {site!r} in the config")
        return json_response({"site": view})


def _written(head: str, parts: Iterable[str], tail: str, sep: str = "") -> Iterator[bytes]:
    """A body written as it is made: `head`, `parts` joined by `sep`,
    `tail`, in pieces of WRITE_PARTS parts."""
    yield head.encode()
    batch: list[str] = []
    first = True
    for part in parts:
        batch.append(part)
        if len(batch) == WRITE_PARTS:
            yield ((sep if not first else "") + sep.join(batch)).encode()
            first, batch = False, []
    if batch:
        yield ((sep if not first else "") + sep.join(batch)).encode()
    yield tail.encode()


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _ms(mark: float) -> float:
    return round((time.monotonic() - mark) * 1000, 1)


def _has_body(req: Request) -> bool:
    return bool(req.content_length) or "HTTP_TRANSFER_ENCODING" in req.environ


def _same_prefix(text: object, prefix) -> bool:
    try:
        return parse_prefix(text) == prefix
    except ModelError:
        return False


def _bool_param(req: Request, name: str) -> bool:
    value = req.GET.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise ModelError(name, f"must be true or false, got {req.GET[name]!r}")
    return value in ("true", "1")


def _int_param(req: Request, name: str, default: int, low: int, high: int = 2**63 - 1) -> int:
    if name not in req.GET:
        return default
    return parse_decimal(req.GET[name], name, low, high)


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
