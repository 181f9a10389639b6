"""The REST API: JSON over HTTP (webob on eventlet's WSGI server), under /v1.

HTTP in, `Change` out: this module turns requests into checked model
values and hands them to the controller's `commit`, which stores them and
waits for the bridges. Every error is a JSON body naming the field and the
problem; nothing a client sends can produce a traceback.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
import time
from typing import Callable

from webob import Request, Response

from lisp_controller.config import TOKEN_ENV
from lisp_controller.controller.gcpause import gc_paused
from lisp_controller.pipeline.flows import render
from lisp_controller.model import Endpoint, Mapping, ModelError, datapath_id_of, parse_iid, parse_prefix, prefix_key
from lisp_controller.api.openapi import document
from lisp_controller.api.static import SECURITY_HEADERS, load as load_assets
from lisp_controller.controller.state import Change, Conflict
from lisp_controller.store import StoreError

LOG = logging.getLogger("lisp_controller.api.rest")
PAUSE_EVERY = 1000
SOURCES = ("config", "endpoint", "api")  # parsed mappings between yields to the hub

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
]


def _compile_route(template: str) -> re.Pattern:
    # {eid} is a prefix and keeps its slash (10.2.0.0/16); other parts don't.
    pattern = re.sub(r"\{(\w+)\}", lambda m: f"(?P<{m.group(1)}>.+)" if m.group(1) == "eid"
                     else f"(?P<{m.group(1)}>[^/]+)", template)
    return re.compile(f"^{pattern}$")


_COMPILED = [(method, _compile_route(path), name) for method, path, name in ROUTES]


class ApiError(Exception):
    def __init__(self, status: int, field: str | None, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.field, self.message, self.headers = status, field, message, headers or {}


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
    `commit(change)`, `metrics`, `datapaths()`, `bridge_flows()` and
    `mapping_counters()`; it also serves the status page."""

    def __init__(self, controller, token: str | None, max_body_bytes: int,
                 pause: Callable[[], None] = lambda: None):
        self.ctl = controller
        self.token = token.encode() if token else None
        self.max_body = max_body_bytes
        self.pause = pause
        self.assets = load_assets()

    # -- WSGI --------------------------------------------------------------
    def __call__(self, environ, start_response):
        req = Request(environ)
        started = time.monotonic()
        try:
            resp = self._dispatch(req)
        except ApiError as e:
            resp = error_response(e.status, e.field, e.message, e.headers)
        except Conflict as e:
            resp = error_response(e.status, e.field, e.message)
        except StoreError as e:
            LOG.error("%s %s: %s", req.method, req.path, e)
            resp = error_response(503, None, f"{e}; nothing was changed")
        except Exception:  # never a traceback to the client; all of it in the log
            LOG.exception("%s %s failed", req.method, req.path)
            resp = error_response(500, None, "internal error; the controller log has the details")
        self.ctl.metrics.inc("lisp_api_requests_total", method=req.method, status=str(resp.status_int))
        self.ctl.metrics.inc("lisp_api_request_seconds_total", time.monotonic() - started, method=req.method)
        return resp(environ, start_response)

    def _dispatch(self, req: Request) -> Response:
        path = req.path_info
        allowed = []
        for method, pattern, name in _COMPILED:
            m = pattern.match(path)
            if m is None:
                continue
            if method != req.method:
                allowed.append(method)
                continue
            if method != "GET":
                self._authorize(req)
            return getattr(self, name)(req, **m.groupdict())
        if allowed:
            raise ApiError(405, None, f"method {req.method} not allowed here; use {', '.join(allowed)}",
                           {"Allow": ", ".join(allowed)})
        raise ApiError(404, None, f"no such resource: {path}")

    def _authorize(self, req: Request) -> None:
        if self.token is None:
            return
        header = req.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token):
            raise ApiError(401, "Authorization", "a valid bearer token is required for changes "
                           f"(set {TOKEN_ENV} for the CLI)", {"WWW-Authenticate": 'Bearer realm="lisp-controller"'})

    def _body(self, req: Request) -> object:
        """The JSON body, refused with 413 before it is read if too big."""
        ctype = req.content_type
        # curl -d sends form-urlencoded unless told otherwise: take it as JSON.
        if ctype and ctype not in ("application/json", "application/x-www-form-urlencoded"):
            raise ApiError(415, "Content-Type", f"expected application/json, got {ctype}")
        length = req.content_length
        if length is not None and length > self.max_body:
            raise ApiError(413, None, f"body of {length} bytes exceeds the limit of {self.max_body} bytes")
        stream = req.environ["wsgi.input"]
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
                    raise ApiError(413, None, f"body exceeds the limit of {self.max_body} bytes")
            data = b"".join(parts)
        if not data:
            raise ApiError(400, None, "a JSON body is required")
        try:
            return json.loads(data)
        except RecursionError:
            raise ApiError(400, None, "JSON nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, None, f"body is not valid JSON: {e}") from None

    def _object(self, value: object, field: str, allowed: set[str]) -> dict:
        if not isinstance(value, dict):
            raise ApiError(400, field or None, "must be a JSON object")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ApiError(400, f"{field}.{unknown[0]}" if field else unknown[0], "unknown field")
        return value

    def _mappings(self, raw: object, field: str) -> list[Mapping]:
        if not isinstance(raw, list):
            raise ApiError(400, field, "must be a list of mappings")
        out = []
        with gc_paused(len(raw)):
            for i, item in enumerate(raw):
                out.append(_parse_mapping(item, f"{field}[{i}]"))
                if i % PAUSE_EVERY == PAUSE_EVERY - 1:
                    self.pause()
        return out

    def _iid(self, text: str) -> int:
        """An IID from a URL or query string."""
        try:
            return parse_iid(int(text), "iid")
        except ValueError:
            raise ApiError(400, "iid", f"must be an integer, got {text!r}") from None
        except ModelError as e:
            raise ApiError(400, e.field, e.problem) from None

    def _key(self, iid: str, eid: str) -> tuple:
        number = self._iid(iid)
        try:
            return (number, parse_prefix(eid, "eid"))
        except ModelError as e:
            raise ApiError(400, e.field, e.problem) from None

    def _commit(self, change: Change, timings: dict | None = None) -> list[dict]:
        return self.ctl.commit(change, timings=timings)

    # -- system ------------------------------------------------------------
    def health(self, req):
        st = self.ctl.state
        return json_response({"status": "ok", "store_error": self.ctl.store_error, "mappings": len(st.cache),
                              "datapaths_configured": len(st.bridges),
                              "datapaths_connected": sum(1 for d in self.ctl.datapaths() if d["connected"])})

    def metrics(self, req):
        resp = Response(content_type="text/plain", charset="utf-8")
        resp.text = self.ctl.metrics.render()
        resp.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
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
            raise ApiError(404, "asset", f"no such file: {asset}")
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
        mappings = list(self.ctl.state.cache)
        if "iid" in req.GET:
            iid = self._iid(req.GET["iid"])
            mappings = [m for m in mappings if m.iid == iid]
        if "prefix" in req.GET:
            try:
                prefix = parse_prefix(req.GET["prefix"], "prefix")
            except ModelError as e:
                raise ApiError(400, "prefix", e.problem) from None
            mappings = [m for m in mappings if m.eid.version == prefix.version and m.eid.subnet_of(prefix)]
        if "source" in req.GET:
            source = req.GET["source"]
            if source not in SOURCES:
                raise ApiError(400, "source", f"must be one of {', '.join(SOURCES)}, got {source!r}")
            mappings = [m for m in mappings if m.source == source]
        mappings.sort(key=lambda m: prefix_key(m.iid, m.eid))
        offset = _int_param(req, "offset", 0, 0)
        limit = _int_param(req, "limit", 100_000, 1)
        now = self.ctl.state.clock()
        page = mappings[offset:offset + limit]
        body = {"total": len(mappings), "offset": offset, "mappings": [mapping_json(m, now) for m in page]}
        if _bool_param(req, "counters"):
            self._add_counters(page, body)
        return json_response(body)

    def _add_counters(self, page: list[Mapping], body: dict) -> None:
        """Each mapping's packets and bytes, summed over the connected
        bridges; null for a mapping no bridge has reported on yet."""
        snap = self.ctl.mapping_counters()
        cookie = self.ctl.state.mapping_cookie
        for m, item in zip(page, body["mappings"]):
            c = snap.counts.get(cookie(m.key))
            item["counters"] = None if c is None else {"packets": c[0], "bytes": c[1]}
        body["counters_at"] = None if snap.read_at is None else \
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(snap.read_at))

    def get_mapping(self, req, iid, eid):
        key = self._key(iid, eid)
        m = self.ctl.state.cache.get(*key)
        if m is None:
            raise ApiError(404, "eid", f"no mapping for {key[0]}:{key[1]}")
        return json_response({"mapping": mapping_json(m, self.ctl.state.clock())})

    def create_mapping(self, req):
        m = _parse_mapping(self._body(req), "mapping")
        bridges = self._commit(Change(put=[m], create_only=True))
        return json_response({"mapping": self._current(m), "bridges": bridges}, 201,
                             {"Location": f"/v1/mappings/{m.iid}/{m.eid}"})

    def put_mapping(self, req, iid, eid):
        key = self._key(iid, eid)
        raw = self._object(self._body(req), "mapping", {"iid", "eid", "rlocs", "ttl", "action"})
        if "iid" in raw and raw["iid"] != key[0]:
            raise ApiError(400, "mapping.iid", f"{raw['iid']!r} does not match the URL ({key[0]})")
        if "eid" in raw and not _same_prefix(raw["eid"], key[1]):
            raise ApiError(400, "mapping.eid", f"{raw['eid']!r} does not match the URL ({key[1]})")
        m = _parse_mapping({**raw, "iid": key[0], "eid": str(key[1])}, "mapping")
        existed = self.ctl.state.owner(key) is not None
        bridges = self._commit(Change(put=[m]))
        return json_response({"mapping": self._current(m), "bridges": bridges}, 200 if existed else 201)

    def delete_mapping(self, req, iid, eid):
        key = self._key(iid, eid)
        m = self.ctl.state.cache.get(*key)
        bridges = self._commit(Change(delete=[key]))
        return json_response({"deleted": mapping_json(m, self.ctl.state.clock()), "bridges": bridges})

    def bulk_mappings(self, req):
        started = time.monotonic()
        body = self._object(self._body(req), "", {"mappings", "delete"})
        timings = {"json_ms": _ms(started)}
        mark = time.monotonic()
        put = self._mappings(body.get("mappings", []), "mappings")
        raw_delete = body.get("delete", [])
        if not isinstance(raw_delete, list):
            raise ApiError(400, "delete", "must be a list of {iid, eid}")
        delete = []
        for i, item in enumerate(raw_delete):
            item = self._object(item, f"delete[{i}]", {"iid", "eid"})
            try:
                delete.append((parse_iid(item.get("iid"), f"delete[{i}].iid"),
                               parse_prefix(item.get("eid"), f"delete[{i}].eid")))
            except ModelError as e:
                raise ApiError(400, e.field, e.problem) from None
        timings["validate_ms"] = _ms(mark)
        with gc_paused(len(put) + len(delete)):
            bridges = self._commit(Change(put=put, delete=delete), timings)
        return json_response({"put": len(put), "deleted": len(delete), "bridges": bridges, "timings": timings})

    def replace_mappings(self, req):
        started = time.monotonic()
        body = self._object(self._body(req), "", {"mappings"})
        if "mappings" not in body:
            raise ApiError(400, "mappings", "is required (the complete set of API mappings)")
        timings = {"json_ms": _ms(started)}
        mark = time.monotonic()
        put = self._mappings(body["mappings"], "mappings")
        timings["validate_ms"] = _ms(mark)
        before = len(self.ctl.state.api_mappings())
        with gc_paused(len(put)):
            bridges = self._commit(Change(put=put, replace_api=True), timings)
        return json_response({"mappings": len(put), "before": before, "bridges": bridges, "timings": timings})

    def lookup(self, req):
        if "eid" not in req.GET or "iid" not in req.GET:
            raise ApiError(400, "eid" if "eid" not in req.GET else "iid", "query parameters iid and eid are required")
        iid = self._iid(req.GET["iid"])
        try:
            address = ipaddress.ip_address(req.GET["eid"])
        except ValueError:
            raise ApiError(400, "eid", f"{req.GET['eid']!r} is not an IPv4 or IPv6 address") from None
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
        label = None
        if want is not None:
            bridge = st.find_bridge(want)
            if bridge is None:
                raise ApiError(404, "bridge", f"no bridge {want!r} in the config")
            label = bridge.label
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
            raise ApiError(400, "endpoint.bridge", "is required (bridge label, name or datapath ID)")
        bridge = self.ctl.state.find_bridge(ref)
        if bridge is None:
            raise ApiError(404, "endpoint.bridge", f"no bridge {ref!r} in the config")
        try:
            ep = Endpoint.parse({k: v for k, v in raw.items() if k != "bridge"}, "endpoint", None)
        except ModelError as e:
            raise ApiError(400, e.field, e.problem) from None
        bridges = self._commit(Change(put_endpoints=[(bridge.label, ep)]))
        return json_response({"endpoint": endpoint_json(bridge.label, ep, "api"), "bridges": bridges}, 201)

    def delete_endpoint(self, req, bridge, port):
        b = self.ctl.state.find_bridge(bridge)
        if b is None:
            raise ApiError(404, "bridge", f"no bridge {bridge!r} in the config")
        bridges = self._commit(Change(delete_endpoints=[(b.label, port)]))
        return json_response({"deleted": {"bridge": b.label, "port": port}, "bridges": bridges})

    # -- datapaths -------------------------------------------------------------
    def list_datapaths(self, req):
        return json_response({"datapaths": self.ctl.datapaths()})

    def _datapath(self, ref: str) -> dict:
        for d in self.ctl.datapaths():
            if ref in (d["bridge"], d["name"]) or \
                    (d["datapath_id"] and datapath_id_of(ref) == int(d["datapath_id"], 16)):
                return d
        raise ApiError(404, "bridge", f"no datapath {ref!r} (configured or connected)")

    def get_datapath(self, req, bridge):
        return json_response({"datapath": self._datapath(bridge)})

    def datapath_flows(self, req, bridge):
        d = self._datapath(bridge)
        form = req.GET.get("format", "json")
        if form not in ("json", "text"):
            raise ApiError(400, "format", f"must be json or text, got {form!r}")
        flows = self.ctl.bridge_flows(d["bridge"]) if d["configured"] else []
        lines = [render(f) for f in sorted(flows)]
        if form == "text":
            resp = Response(content_type="text/plain", charset="utf-8")
            resp.text = "".join(line + "\n" for line in lines)
            return resp
        return json_response({"bridge": d["bridge"], "connected": d["connected"], "flows": lines})


def _ms(mark: float) -> float:
    return round((time.monotonic() - mark) * 1000, 1)


def _parse_mapping(raw: object, field: str) -> Mapping:
    try:
        return Mapping.parse(raw, field, source="api")
    except ModelError as e:
        raise ApiError(400, e.field, e.problem) from None


def _same_prefix(text: object, prefix) -> bool:
    try:
        return parse_prefix(text) == prefix
    except ModelError:
        return False


def _bool_param(req: Request, name: str) -> bool:
    value = req.GET.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise ApiError(400, name, f"must be true or false, got {req.GET[name]!r}")
    return value in ("true", "1")


def _int_param(req: Request, name: str, default: int, low: int) -> int:
    if name not in req.GET:
        return default
    try:
        value = int(req.GET[name])
    except ValueError:
        raise ApiError(400, name, f"must be an integer, got {req.GET[name]!r}") from None
    if value < low:
        raise ApiError(400, name, f"must be at least {low}")
    return value
