"""The OpenAPI 3 document of the REST API, built from the route table.

Each handler has one entry here (summary, body, responses); `document`
refuses to build if a route has none, and the tests check the served
document against the routes and against real responses.
"""
from __future__ import annotations

import re

_ERROR = {"$ref": "#/components/schemas/Error"}
# The syntax of what the API accepts. Some rules are not syntax and are
# answered 400 naming the field: host bits set in a prefix, an RLOC listed
# twice, one key twice in one request, an address a router would refuse
# (README.rst's configuration reference lists them).
_ADDRESS = {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}],
            "description": "IPv4 or IPv6 address"}
_PREFIX = {"type": "string", "pattern": r"^[0-9A-Fa-f.:]+(/[0-9]{1,3})?$",
           "description": "EID prefix, e.g. 10.2.0.0/16 or 2001:db8::/48 (host bits zero); "
                          "a bare address is a host prefix"}
# No lookahead in these patterns (test generators do not all have it): all
# zeros, '.' and '..' are refused beyond the pattern.
_MAC = {"type": "string", "pattern": "^[0-9A-Fa-f][02468AaCcEe](:[0-9A-Fa-f]{2}){5}$",
        "description": "unicast, not all zeros"}
_IFNAME = {"type": "string", "pattern": r"^[!-.0-~]{1,15}$",
           "description": "interface name: 1 to 15 printable ASCII characters, no space or '/', not . or .."}
_KEY = {"type": "string", "pattern": "^[A-Za-z0-9._:~+=-]{1,200}$"}
_IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "required": False, "schema": _KEY,
                "description": "a key of the client's (a UUID): the write is recorded with it, in the same "
                               "transaction; sent again with the same key and body, it is answered from the "
                               "record (header Idempotent-Replayed) instead of being applied twice. "
                               "GET /v1/requests/{key} says what became of it. Kept 24 hours."}
_SOURCE = {"type": "string", "pattern": "^(config|endpoint|api|map-resolver|registered:[A-Za-z0-9][A-Za-z0-9._-]*)$",
           "description": "config, endpoint, api; or what the LISP control plane learned: registered:<site> "
                          "(a site's Map-Register), map-resolver (a Map-Reply)"}
_RLOC_OUT = {"type": "object", "required": ["address", "priority", "weight"], "properties": {
    "address": {"type": "string"}, "priority": {"type": "integer"}, "weight": {"type": "integer"}}}

def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(**props) -> dict:
    schema = {"type": "object", "required": list(props), "properties": props}
    if "bridges" in props:  # a write's answer: on a shared store, the other controllers' too (optional)
        schema["properties"] = {**props, "instances": {"type": "array", "items": _ref("InstanceResult")}}
    return schema


SCHEMAS = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["status", "message"], "properties": {
            "status": {"type": "integer"}, "field": {"type": ["string", "null"]},
            "message": {"type": "string"}}}}},
    "Rloc": {"type": "object", "required": ["address"], "additionalProperties": False, "properties": {
        "address": _ADDRESS,
        "priority": {"type": "integer", "minimum": 0, "maximum": 255, "default": 1,
                     "description": "lowest wins; 255 = never used"},
        "weight": {"type": "integer", "minimum": 0, "maximum": 100, "default": 100}}},
    "MappingIn": {"type": "object", "required": ["iid", "eid"], "additionalProperties": False, "properties": {
        "iid": {"type": "integer", "minimum": 0, "maximum": 16777215},
        "eid": _PREFIX,
        "rlocs": {"type": "array", "items": {"oneOf": [{"$ref": "#/components/schemas/Rloc"}, _ADDRESS]},
                  "description": "addresses must differ"},
        "ttl": {"type": ["integer", "null"], "minimum": 1, "maximum": 2**32 - 1,
                "description": "minutes; absent = static"},
        "action": {"type": "string", "enum": ["no-action", "native-forward", "send-map-request", "drop"],
                   "description": "for negative entries (no usable RLOC)"}}},
    "Mapping": {"type": "object", "required": ["iid", "eid", "rlocs", "action", "source"], "properties": {
        "iid": {"type": "integer"}, "eid": {"type": "string"},
        "rlocs": {"type": "array", "items": _RLOC_OUT},
        "ttl": {"type": ["integer", "null"]}, "action": {"type": "string"},
        "source": _SOURCE,
        "expires_in": {"type": ["number", "null"], "description": "seconds until the TTL runs out"},
        "counters": {"description": "in a list only with ?counters=true: traffic of the mapping's flow, "
                                    "summed over the connected bridges; null if no bridge has reported it yet",
                     "oneOf": [{"type": "null"}, {"type": "object", "required": ["packets", "bytes"], "properties": {
                         "packets": {"type": "integer"}, "bytes": {"type": "integer"},
                         "rlocs": {"type": "array", "description": "traffic per RLOC the mapping sends to "
                                   "(the best priority's); for an RLOC set, its select group's bucket "
                                   "counters, shared by every mapping with that set (null: not read yet)",
                                   "items": {"type": "object", "required": ["address", "weight", "packets", "bytes"],
                                             "properties": {"address": _ADDRESS, "weight": {"type": "integer"},
                                                            "packets": {"type": ["integer", "null"]},
                                                            "bytes": {"type": ["integer", "null"]}}}},
                         "group": {"type": "object", "required": ["group_id", "mappings"],
                                   "description": "the OpenFlow select group of the RLOC set",
                                   "properties": {"group_id": {"type": "integer"},
                                                  "mappings": {"type": "integer",
                                                               "description": "mappings sharing it"}}}}}]}}},
    "EndpointIn": {"type": "object", "required": ["bridge", "port", "mac", "iid", "eids"],
                   "additionalProperties": False, "properties": {
                       "bridge": {"type": "string", "description": "label, name or datapath ID"},
                       "port": _IFNAME, "mac": _MAC,
                       "iid": {"type": "integer", "minimum": 0, "maximum": 16777215},
                       "eids": {"type": "array", "items": _ADDRESS, "minItems": 1},
                       "gateway": {"type": "string", "format": "ipv4",
                                   "description": "the VM's default router (IPv4)"}}},
    "Endpoint": {"type": "object", "required": ["bridge", "port", "mac", "iid", "eids", "source"], "properties": {
        "bridge": {"type": "string"}, "port": {"type": "string"}, "mac": {"type": "string"},
        "iid": {"type": "integer"}, "eids": {"type": "array", "items": {"type": "string"}},
        "gateway": {"type": ["string", "null"]}, "source": {"type": "string", "enum": ["config", "api"]}}},
    "BridgeResult": {"type": "object", "required": ["bridge", "status"], "properties": {
        "bridge": {"type": "string"},
        "status": {"type": "string", "enum": ["confirmed", "rejected", "timeout", "not-connected",
                                              "other-master"],
                   "description": "confirmed: the bridge holds the change (barrier); rejected: it refused "
                                  "flows (see errors); timeout: still being applied; not-connected: "
                                  "it gets the change when it connects; other-master: another instance "
                                  "programs it (an etcd store: docs/etcd.rst)"},
        "master": {"type": ["string", "null"], "description": "with other-master: the instance that does"},
        "errors": {"type": "array", "items": {"type": "string"}},
        "stages_ms": {"type": "object", "additionalProperties": {"type": "number"},
                      "description": "the bridge's last sync: compile, diff, switch (bundle to barrier)"}}},
    "InstanceResult": {"type": "object", "required": ["instance", "status", "applied"],
                       "description": "with an etcd store shared by several controllers: whether each "
                                      "other controller's bridges hold the change (docs/etcd.rst)",
                       "properties": {
        "instance": {"type": "string", "description": "host:pid:tag of the controller"},
        "status": {"type": "string", "enum": ["confirmed", "timeout", "gone"],
                   "description": "confirmed: every bridge it drives holds the change; timeout: not "
                                  "within confirm_timeout (it still applies it); gone: it stopped meanwhile"},
        "applied": {"type": ["integer", "null"], "description": "the last change its bridges hold"}}},
    "Timings": {"type": "object", "additionalProperties": {"type": "number"},
                "description": "milliseconds: read (the body decoded and checked, one mapping at a time), "
                               "check, store, state (compile and encode), bridges (waiting for the barriers)"},
    "Datapath": {"type": "object", "required": ["bridge", "configured", "connected"], "properties": {
        "bridge": {"type": "string"}, "configured": {"type": "boolean"},
        "datapath_id": {"type": ["string", "null"]}, "name": {"type": ["string", "null"]},
        "connected": {"type": "boolean"}, "connected_since": {"type": ["string", "null"]},
        "address": {"type": ["string", "null"]}, "rloc": {"type": ["string", "null"]},
        "tunnel_profile": {"type": ["string", "null"]}, "tunnel_port": {"type": ["string", "null"]},
        "ports": {"type": "object", "additionalProperties": {"type": "integer"}},
        "missing_ports": {"type": "array", "items": {"type": "string"}},
        "flows_desired": {"type": ["integer", "null"]}, "flows_installed": {"type": ["integer", "null"]},
        "flow_mods_sent": {"type": "integer"}, "last_reconcile": {"type": ["string", "null"]},
        "groups_desired": {"type": ["integer", "null"], "description": "select groups (RLOC sets) it should hold"},
        "groups_installed": {"type": ["integer", "null"]}, "group_mods_sent": {"type": "integer"},
        "last_reconcile_ms": {"type": ["number", "null"]},
        "verified_ms": {"type": ["number", "null"], "description": "from connecting to the first full sync"},
        "last_verify": {"type": ["string", "null"], "description": "the last deep check (whole flows "
                        "read back and compared; [controller] reconcile_interval)"},
        "last_verify_ms": {"type": ["number", "null"], "description": "how long it took"},
        "flows_repaired": {"type": "integer", "description": "flows found changed on the switch and "
                           "replaced since the bridge connected"},
        "flows_rejected": {"type": "integer", "description": "flows the bridge refused in its last sync"},
        "errors": {"type": "array", "items": {"type": "string"}}, "degraded": {"type": "boolean"},
        "underlay_mtu": {"type": "integer", "description": "[[bridge]] underlay_mtu (docs/mtu.rst)"},
        "tunnel_mtu": {"type": "object", "description": "largest inner packet the tunnel carries, "
                       "towards IPv4 and IPv6 RLOCs", "properties": {
                           "ipv4_rloc": {"type": "integer"}, "ipv6_rloc": {"type": "integer"}}},
        "too_big": {"type": "object", "description": "packets too big for the tunnel: as the bridge's "
                    "meter counted them (packets; over_rate: dropped by the meter), and what the "
                    "controller did with those it let through", "properties": {
                        "packets": {"type": ["integer", "null"]}, "over_rate": {"type": ["integer", "null"]},
                        **{k: {"type": "integer"} for k in ("icmp", "fragmented", "dropped", "ignored")}}},
        "role": {"type": ["string", "null"], "enum": ["equal", "master", "slave", "deposed", None],
                 "description": "OpenFlow role of this instance's connection: equal without an etcd store "
                                "(the only controller); with one, master or slave as etcd decides, deposed "
                                "while a refused master waits for etcd (docs/etcd.rst)"},
        "generation": {"type": ["integer", "null"], "description": "the generation ID the switch took from "
                       "this instance as master (etcd's revision of the bridge's owner key)"},
        "master": {"type": ["string", "null"], "description": "the instance etcd names master of the bridge "
                   "(null without an etcd store, or while none is)"}}},
    "Instance": {"type": "object", "required": ["instance", "self", "masters", "connected"], "properties": {
        "instance": {"type": ["string", "null"], "description": "[cluster] instance (null without etcd)"},
        "self": {"type": "boolean", "description": "the instance answering"},
        "masters": {"type": "integer", "description": "bridges it is master of"},
        "connected": {"type": "array", "items": {"type": "string"},
                      "description": "datapath IDs of the bridges connected to it"}}},
    "Site": {"type": "object", "required": ["name", "proxy_reply", "max_registrations", "keys", "prefixes",
                                            "registered"], "properties": {
        "name": {"type": "string"},
        "proxy_reply": {"type": "boolean", "description": "answer Map-Requests for the site even when its ETRs "
                        "did not ask (otherwise each registration's P bit decides; unanswered requests go to "
                        "the registering ETR)"},
        "max_registrations": {"type": "integer"},
        "keys": {"type": "array", "description": "the keys its Map-Registers may be signed with (never the "
                 "secret)", "items": _obj(key_id={"type": "integer"}, alg={"type": "string",
                                                                           "enum": ["sha1", "sha256"]})},
        "prefixes": {"type": "array", "items": _obj(iid={"type": "integer"}, eid={"type": "string"},
                                                    accept_more_specifics={"type": "boolean"})},
        "registered": {"type": "integer", "description": "EID-prefixes registered now"},
        "registrations": {"type": "array", "items": {"$ref": "#/components/schemas/Registration"},
                          "description": "only in GET /v1/sites/{site}"}}},
    "Registration": {"type": "object", "required": ["iid", "eid", "rlocs", "xtr", "last_registered",
                                                    "expires_in"], "properties": {
        "iid": {"type": "integer"}, "eid": {"type": "string"}, "rlocs": {"type": "array", "items": _RLOC_OUT},
        "action": {"type": "string", "description": "for a registration without RLOCs"},
        "xtr": {"type": "string", "description": "address:port the Map-Register came from"},
        "xtr_id": {"type": ["string", "null"], "description": "the xTR-ID it carried (hex)"},
        "last_registered": {"type": "string"}, "expires_in": {"type": "number", "description": "seconds"},
        "ttl": {"type": "integer", "description": "minutes the registration lives unless refreshed"},
        "reply_ttl": {"type": "integer", "description": "minutes in the Map-Replies sent for it"},
        "proxy_reply": {"type": "boolean", "description": "the ETR asked us to answer for it"},
        "hidden_by": {"type": ["string", "null"], "description": "config, endpoint or api: a mapping for "
                      "the same prefix that wins over the registration in the map-cache"}}},
    "DatapathConflict": {"type": "object", "description": "a datapath ID claimed by a second connection "
                 "(docs/reliability.rst, OpenFlow admission); listed for two minutes after the last attempt",
                 "required": ["datapath_id", "bridge", "reason", "holder", "claimant", "message", "count",
                              "first", "last"], "properties": {
        "datapath_id": {"type": "string"}, "bridge": {"type": ["string", "null"]},
        "reason": {"type": "string", "enum": ["duplicate", "certificate", "displaced"],
                   "description": "duplicate: refused, the holder answers; certificate: refused, not the "
                                  "bridge's tls_peer; displaced: the holder did not answer and lost the ID"},
        "holder": {"type": ["string", "null"], "description": "address of the session holding the ID"},
        "claimant": {"type": "string", "description": "address of the connection that claimed it last"},
        "message": {"type": "string"}, "count": {"type": "integer"},
        "first": {"type": "string"}, "last": {"type": "string"}}},
}


_BRIDGES = {"type": "array", "items": _ref("BridgeResult")}
_HEALTH = _obj(status={"type": "string", "enum": ["ok", "failing"]},
               problems={"type": "array", "items": {"type": "string"}, "description": "why it is failing"},
               store_error={"type": ["string", "null"], "description": "why the last change could not be "
                            "stored (503); null once a change is stored again"},
               lease_problem={"type": ["string", "null"], "description": "with an etcd store: why this "
                              "instance holds no live lease (it masters no bridge meanwhile); null when it does"},
               mappings={"type": "integer"}, datapaths_configured={"type": "integer"},
               datapaths_connected={"type": "integer"})
_MAPPING_LIST = {"type": "array", "items": _ref("MappingIn")}
_Q = lambda name, schema, desc, required=False: {  # noqa: E731
    "name": name, "in": "query", "required": required, "schema": schema, "description": desc}

# handler -> (summary, request body schema or None, {status: (description, schema)}, query params)
OPERATIONS: dict[str, tuple] = {
    "page": ("The status page (HTML; it reads this API)", None, {
        200: ("the page", "html"), 304: ("unchanged since the ETag given in If-None-Match", None)}, []),
    "asset": ("A file of the status page (style sheet, script, icon)", None, {
        200: ("the file", "asset"), 304: ("unchanged since the ETag given in If-None-Match", None)}, []),
    "health": ("Whether the controller does its job, and a summary", None, {
        200: ("ok", _HEALTH), 503: ("failing: the store cannot be written, or no configured bridge is "
                                    "connected after [api] health_grace seconds (problems says which)", _HEALTH)},
        []),
    "metrics": ("Metrics in the Prometheus text format", None, {200: ("metrics", "text")}, []),
    "resources": ("What the controller process holds, for leak checks (walks every object: "
                  "a full garbage collection, slow with a big map-cache)", None, {
        200: ("resources", _obj(resident_bytes={"type": "integer"}, open_fds={"type": "integer"},
                                greenthreads={"type": "integer"}, objects={"type": "integer"},
                                hub_timers={"type": "integer"},
                                sessions={"type": "integer"}))}, []),
    "openapi": ("This document", None, {200: ("OpenAPI 3 document", {"type": "object"})}, []),
    "list_mappings": ("One page of the mappings (all owners), filtered and sorted by the controller: "
                      "the page costs the controller O(log n + page) in IID and prefix order, and never holds "
                      "it for long in any other order or filter (docs/performance.rst); any unknown or "
                      "malformed parameter is 400 naming it", None, {
        200: ("mappings", {"type": "object", "properties": {
            "total": {"type": "integer", "description": "mappings that match the filters"},
            "in_map_cache": {"type": "integer", "description": "mappings in the map-cache, filtered or not"},
            "offset": {"type": "integer"}, "limit": {"type": "integer"},
            "sort": {"type": "string"}, "order": {"type": "string", "enum": ["asc", "desc"]},
            "mappings": {"type": "array", "items": _ref("Mapping")},
            "counters_at": {"type": ["string", "null"], "description": "with ?counters=true: when the "
                            "bridges were last read (every few seconds at most); null: not yet"}},
            "required": ["total", "in_map_cache", "offset", "limit", "sort", "order", "mappings"]})},
        [_Q("iid", {"type": "integer", "minimum": 0, "maximum": 16777215}, "only this Instance ID"),
         _Q("prefix", _PREFIX, "only mappings inside this prefix"),
         _Q("source", _SOURCE, "only this owner (registered:<site> must name a configured site)"),
         _Q("eid_contains", {"type": "string", "maxLength": 200},
            "only mappings whose EID prefix, as written (10.2.0.0/16), contains this text"),
         _Q("rloc_contains", {"type": "string", "maxLength": 200},
            "only mappings with an RLOC address that contains this text"),
         _Q("q", {"type": "string", "maxLength": 200}, "search: every space-separated word must appear "
            "in 'IID EID RLOCs (address pPRIORITY wWEIGHT) action source', case-insensitive"),
         _Q("sort", {"type": "string", "enum": ["prefix", "eid", "rlocs", "ttl", "action", "source", "packets",
                                                "bytes"], "default": "prefix"},
            "prefix: IID, then prefix (IPv4 first); eid: prefix, then IID; rlocs: the first RLOC's address "
            "(none last); ttl: time left (static last); packets, bytes: the flow's counters (not read yet: "
            "first). Ties are broken by IID and prefix"),
         _Q("order", {"type": "string", "enum": ["asc", "desc"], "default": "asc"},
            "desc is asc reversed, ties included"),
         _Q("offset", {"type": "integer", "minimum": 0, "default": 0}, "skip this many"),
         _Q("limit", {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000},
            "at most this many; page with offset for more"),
         _Q("counters", {"type": "boolean"}, "add the packet and byte counters of the mappings returned")]),
    "create_mapping": ("Create a mapping (409 if it exists)", _ref("MappingIn"), {
        201: ("created and sent to the bridges", _obj(mapping=_ref("Mapping"), bridges=_BRIDGES))}, []),
    "replace_mappings": ("Replace every API mapping with the given set", _obj(mappings=_MAPPING_LIST), {
        200: ("replaced", _obj(mappings={"type": "integer"}, before={"type": "integer"}, bridges=_BRIDGES,
                               timings=_ref("Timings")))}, []),
    "bulk_mappings": ("Create or replace many mappings and delete others, in one transaction",
                      {"type": "object", "properties": {"mappings": _MAPPING_LIST, "delete": {
                          "type": "array", "items": _obj(iid={"type": "integer"}, eid={"type": "string"})}}}, {
        200: ("applied", _obj(put={"type": "integer"}, deleted={"type": "integer"}, bridges=_BRIDGES,
                              timings=_ref("Timings")))}, []),
    "get_mapping": ("One mapping, with its counters", None, {200: ("the mapping", {
        "type": "object", "required": ["mapping"], "properties": {
            "mapping": _ref("Mapping"),
            "counters_at": {"type": ["string", "null"], "description": "when the bridges were last read; "
                            "null: not yet"}}})}, []),
    "put_mapping": ("Create or replace one mapping",
                    {"type": "object", "additionalProperties": False,
                     "properties": SCHEMAS["MappingIn"]["properties"]}, {
        200: ("replaced", _obj(mapping=_ref("Mapping"), bridges=_BRIDGES)),
        201: ("created", _obj(mapping=_ref("Mapping"), bridges=_BRIDGES))}, []),
    "delete_mapping": ("Delete one API mapping", None, {
        200: ("deleted", _obj(deleted=_ref("Mapping"), bridges=_BRIDGES))}, []),
    "lookup": ("Which mapping serves this EID (longest prefix match)", None, {
        200: ("the answer; mapping is null on a miss, with the miss action",
              {"type": "object", "required": ["iid", "eid", "mapping"], "properties": {
                  "iid": {"type": "integer"}, "eid": {"type": "string"},
                  "mapping": {"oneOf": [_ref("Mapping"), {"type": "null"}]},
                  "miss_action": {"type": "string"}}})},
        [_Q("iid", {"type": "integer", "minimum": 0, "maximum": 16777215}, "Instance ID", True),
         _Q("eid", _ADDRESS, "EID address", True)]),
    "list_endpoints": ("Local endpoints of every bridge (config and API)", None, {
        200: ("endpoints", _obj(endpoints={"type": "array", "items": _ref("Endpoint")}))},
        [_Q("bridge", {"type": "string"}, "only this bridge")]),
    "add_endpoint": ("Add a local endpoint to a bridge", _ref("EndpointIn"), {
        201: ("added", _obj(endpoint=_ref("Endpoint"), bridges=_BRIDGES))}, []),
    "delete_endpoint": ("Delete an API endpoint", None, {
        200: ("deleted", _obj(deleted=_obj(bridge={"type": "string"}, port={"type": "string"}),
                              bridges=_BRIDGES))}, []),
    "list_datapaths": ("Bridges: configured and connected", None, {
        200: ("datapaths", _obj(datapaths={"type": "array", "items": _ref("Datapath")},
                                conflicts={"type": "array", "items": _ref("DatapathConflict")}))}, []),
    "list_instances": ("The controller instances alive (an etcd store: those with a live lease) and how "
                       "many bridges each masters", None, {
        200: ("instances", _obj(shared={"type": "boolean", "description": "false: no etcd store, one controller"},
                                instance={"type": ["string", "null"], "description": "the one answering"},
                                lease_problem={"type": ["string", "null"], "description": "why the answering "
                                               "instance holds no live lease (it masters nothing meanwhile)"},
                                instances={"type": "array", "items": _ref("Instance")}))}, []),
    "get_datapath": ("One bridge", None, {200: ("the bridge", _obj(datapath=_ref("Datapath")))}, []),
    "datapath_flows": ("The bridge's flows and groups in ovs-ofctl syntax", None, {
        200: ("flows and groups (?format=text: the flows, one per line, as text/plain)",
              (_obj(bridge={"type": "string"}, connected={"type": "boolean"},
                    flows={"type": "array", "items": {"type": "string"}},
                    groups={"type": "array", "items": {"type": "string"},
                            "description": "select groups of RLOC sets, as ovs-ofctl add-group takes them"}),
               "text"))},
        [_Q("format", {"type": "string", "enum": ["json", "text"]}, "text: one flow per line")]),
    "get_request": ("What became of a write sent with an Idempotency-Key", None, {
        200: ("committed (with its answer), or still in progress", {
            "type": "object", "required": ["key", "state"], "properties": {
                "key": {"type": "string"}, "state": {"type": "string", "enum": ["committed", "in-progress"]},
                "method": {"type": "string"}, "path": {"type": "string"}, "status": {"type": "integer"},
                "answered": {"type": "boolean", "description": "false: the controller stopped after the "
                             "commit, before it answered; the change is in the store all the same"},
                "committed_at": {"type": "string"},
                "response": {"type": "object", "description": "the body it was answered (without the "
                             "bridges' part if not answered)"}}})}, []),
    "list_sites": ("The Map-Server's sites (config) and how many EID-prefixes each has registered", None, {
        200: ("sites", _obj(sites={"type": "array", "items": _ref("Site")}))}, []),
    "get_site": ("One site with its current registrations", None, {
        200: ("the site", _obj(site=_ref("Site")))}, []),
    "lisp_control_plane": ("The LISP control plane: settings ([lisp], keys left out), registration state "
                           "per EID and map-server, resolver and received-message counts", None, {
        200: ("the control plane; enabled is false without map-servers and map-resolvers",
              {"type": "object", "required": ["enabled"], "properties": {
                  "enabled": {"type": "boolean"}, "control_address": {"type": "string"},
                  "map_servers": {"type": "array", "items": _obj(address={"type": "string"},
                                                                 key_id={"type": "integer"})},
                  "map_resolvers": {"type": "array", "items": {"type": "string"}},
                  "register_interval": {"type": "number"}, "proxy_reply": {"type": "boolean"},
                  "want_map_notify": {"type": "boolean"}, "advertise_gpe": {"type": "boolean"},
                  "registrations": {"type": "array", "items": _obj(
                      iid={"type": "integer"}, eid={"type": "string"}, map_server={"type": "string"},
                      rloc={"type": "string"}, bridge={"type": "string"},
                      state={"type": "string", "enum": ["registering", "registered", "failing", "withdrawing"]},
                      registered_at={"type": ["string", "null"]}, attempts={"type": "integer"},
                      error={"type": ["string", "null"]})},
                  "resolver": {"type": "object"}, "registrar": {"type": "object"},
                  "received": {"type": "object"}}})}, []),
}

_PARAM_DOC = {
    "iid": ("Instance ID", {"type": "integer", "minimum": 0, "maximum": 16777215}),
    "eid": ("EID prefix; its slash may be sent as is (10.2.0.0/16) or as %2F", _PREFIX),
    "bridge": ("bridge label, name or datapath ID", {"type": "string"}),
    "port": ("port name", {"type": "string"}),  # any text: one that cannot exist is 404
    "asset": ("file name, e.g. app.js", {"type": "string"}),
    "key": ("the Idempotency-Key the write was sent with", _KEY),
    "site": ("site name", {"type": "string"}),
}
# Responses that are not JSON, by the marker OPERATIONS uses instead of a schema.
_MEDIA = {"text": ("text/plain",), "html": ("text/html",),
          "asset": ("text/css", "text/javascript", "image/svg+xml")}
_ERRORS = {400: "bad input (the body names the field)", 401: "token missing or wrong",
           403: "refused: a cross-site request (Origin, Sec-Fetch-Site), or a Host that is not this API's",
           404: "not found", 409: "conflict (exists, or owned by the config or an endpoint; or the "
           "Idempotency-Key's first request is still being answered; or a bridge name that several "
           "bridges share: use the datapath ID)",
           413: "body too large", 415: "not JSON (a change needs Content-Type: application/json)",
           422: "the Idempotency-Key was used for another request",
           503: "the store cannot be written; nothing changed"}


def document(routes) -> dict:
    paths: dict = {}
    for method, path, name in routes:
        summary, body, responses, query = OPERATIONS[name]
        op: dict = {"operationId": name, "summary": summary, "responses": {}}
        params = [{"name": p, "in": "path", "required": True, "description": _PARAM_DOC[p][0],
                   "schema": _PARAM_DOC[p][1]} for p in _path_params(path)]
        if method != "GET":
            query = [*query, _IDEMPOTENCY]
        if params or query:
            op["parameters"] = params + list(query)
        if body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        for status, (desc, schema) in responses.items():
            op["responses"][str(status)] = {"description": desc}
            if isinstance(schema, tuple):  # JSON, or another media type by request
                json_schema, marker = schema
                op["responses"][str(status)]["content"] = {
                    "application/json": {"schema": json_schema},
                    **{t: {"schema": {"type": "string"}} for t in _MEDIA[marker]}}
            elif isinstance(schema, str):
                op["responses"][str(status)]["content"] = {t: {"schema": {"type": "string"}} for t in _MEDIA[schema]}
            elif schema is not None:
                op["responses"][str(status)]["content"] = {"application/json": {"schema": schema}}
        errors = [400, 404] if method == "GET" and (params or query) else []
        if method == "GET" and any(p["name"] == "bridge" for p in params + list(query)):
            errors.append(409)  # a name that several bridges share
        if name == "resources":
            errors = [401]
        if method != "GET":
            errors = [400, 401, 403, 404, 409, 413, 415, 422, 503]
        for status in errors:
            op["responses"][str(status)] = {"description": _ERRORS[status],
                                            "content": {"application/json": {"schema": _ERROR}}}
        if method != "GET" or name == "resources":
            op["security"] = [{"bearer": []}, {}]
        paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "lisp-controller", "version": "1",
                 "description": "Map-cache, local endpoints and bridges of a LISP controller for Open vSwitch. "
                                "Writes answer once committed to the store and, within a bounded wait, "
                                "confirmed by barrier on each connected bridge (see `bridges`). A change "
                                "needs Content-Type: application/json, is refused from other web sites "
                                "(Origin, Sec-Fetch-Site), needs the bearer token when one is configured, "
                                "and may carry an Idempotency-Key."},
        "paths": paths,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def _path_params(path: str) -> list[str]:
    return re.findall(r"\{(\w+)\}", path)
