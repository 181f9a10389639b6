"""The REST API: JSON over HTTP (webob on eventlet's WSGI server), under /v1.

HTTP in, `Change` out: this module turns requests into checked model
values and hands them to the controller's `apply_change`, which stores them and
waits for the bridges. Every error is a JSON body naming the field and the
problem; nothing a client sends can produce a traceback. The layers below
raise the controller's own errors (`lisp_controller/errors.py`); what each
means in HTTP is decided in one place, `ERROR_STATUS` (api/answers.py).

This module routes a request to its handler, reads its body, and holds
the handlers of the system views, the status page, endpoints, datapaths,
sites and the LISP control plane. The handlers of mappings are in
api/mappings.py, and changes sent with an Idempotency-Key go through
api/idempotency.py; `Api` is made of the three.
"""
from __future__ import annotations

import json
import logging
import re
import time
from typing import Callable

from webob import Request, Response

from lisp_controller.api.answers import (BadFraming, MethodNotAllowed, PayloadTooLarge, UnsupportedMediaType,
                                         error_response, has_body, json_response, status_of, written)
from lisp_controller.api.guard import Guard
from lisp_controller.api.idempotency import KEY_HEADER, Idempotency
from lisp_controller.api.jsonstream import ListOf, decode, read_object
from lisp_controller.api.mappings import PAUSE_EVERY, MappingHandlers
from lisp_controller.api.metrics import CONTENT_TYPE as METRICS_TYPE
from lisp_controller.api.openapi import document
from lisp_controller.api.static import SECURITY_HEADERS, load as load_assets
from lisp_controller.config import ApiSettings
from lisp_controller.controller.offhub import BIG_BYTES, off_hub
from lisp_controller.controller.slices import Slices
from lisp_controller.controller.state import Change
from lisp_controller.errors import Conflict, LispControllerError, NotFound
from lisp_controller.model import IID_MAX, Endpoint, ModelError, parse_decimal, parse_prefix, refers_to
from lisp_controller.pipeline.flows import render_group
from lisp_controller.store import StoreError

LOG = logging.getLogger("lisp_controller.api.rest")

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


def endpoint_json(label: str, ep: Endpoint, source: str) -> dict:
    return {"bridge": label, "port": ep.port, "mac": ep.mac, "iid": ep.iid,
            "eids": [str(a) for a in ep.eids], "gateway": str(ep.gateway) if ep.gateway else None,
            "source": source}


class Api(MappingHandlers, Idempotency):
    """A WSGI application around a controller that offers `state`,
    `apply_change(change)`, `wait_confirmed()`, `store`, `store_error`, `membership`,
    `metrics`, `datapaths()`, `bridge_flows()` and `mapping_counters()`;
    it also serves the status page. Its handlers of mappings come from
    `MappingHandlers` (api/mappings.py), its changes once from
    `Idempotency` (api/idempotency.py)."""

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
            if has_body(req) and req.content_type != "application/json":
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
                            app_iter=written("", (line + "\n" for line in lines), ""))
        groups = [render_group(g) for _, g in sorted(listed.groups.items())] if listed is not None else []
        head = '{"bridge":%s,"connected":%s,"flows":[' % (json.dumps(d["bridge"]), json.dumps(d["connected"]))
        tail = '],"groups":%s}' % json.dumps(groups, separators=(",", ":"))
        return Response(content_type="application/json", charset="utf-8",
                        app_iter=written(head, map(json.dumps, lines), tail, ","))

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
