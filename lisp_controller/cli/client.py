"""The command-line client: `lisp-controller mapping|endpoint|datapath|site|health ...`.

Every API operation, readable tables by default, `--json` for scripts.
Talks to the API through its one client (cli/api.py).
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import socket
import ssl
import sys
import urllib.parse
import uuid

from lisp_controller.cli.api import DEFAULT_URL, ApiClient
from lisp_controller.config import TOKEN_ENV, url_problem
from lisp_controller.model import IID_MAX, ModelError, parse_decimal, unique_keys

URL_ENV = "LISP_CONTROLLER_URL"
# Seconds to wait for the controller, unless --timeout says otherwise. A
# write waits for the bridges' barriers ([api] confirm_timeout, 5 s by
# default); a bulk write of a million mappings takes about a minute.
READ_TIMEOUT = 10.0
WRITE_TIMEOUT = 60.0
BULK_TIMEOUT = 600.0
PAGE_MAX = 10_000  # the most mappings GET /v1/mappings answers at once


class ClientError(Exception):
    """One line for the user, and the exit status: 1 the controller said
    no, 2 the command line is wrong, 3 the controller could not be asked."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def controller_url(given: str | None) -> str:
    """The API's base URL from --url, else LISP_CONTROLLER_URL, else the
    default; anything but scheme://host[:port][/path] is refused here, in one
    line, before a request is made."""
    source = "--url"
    if given is None:
        given, source = os.environ.get(URL_ENV), URL_ENV
        if given is None:
            return DEFAULT_URL
    problem = url_problem(given)
    if problem is not None:
        raise ClientError(f"{source}: not a controller URL like {DEFAULT_URL}: {problem}", 2)
    return given


def request(url: str, method: str, path: str, body: object = None, query: dict | None = None,
            timeout: float | None = None, key: str | None = None, answers: tuple[int, ...] = ()) -> object:
    """The decoded answer, through the API's one client (cli/api.py).
    `timeout` bounds every wait (connect, each read); None takes the
    default for reads or writes. `key`: the write's Idempotency-Key.
    `answers`: error statuses whose body is an answer too (a failing
    health). Anything else goes wrong: ClientError, in one line."""
    if timeout is None:
        timeout = READ_TIMEOUT if method == "GET" else WRITE_TIMEOUT
    if key:  # it may or may not have been applied: the same key finds out, and applies it once
        unsure = (f"; whether the change was applied is unknown: run the same command with --key {key} "
                  "(it is applied once, whatever happened)")
    else:
        unsure = "" if method == "GET" else "; the change may have been applied all the same: look before retrying"
    try:
        client = ApiClient(url, os.environ.get(TOKEN_ENV) or None, timeout)
        status, out = client(method, path, body, query=query, key=key)
    except TimeoutError:
        raise ClientError(f"no answer from the controller at {url} within {timeout:g} s "
                          f"(--timeout){unsure}", 3) from None
    except ConnectionRefusedError as e:  # then nothing was sent
        raise ClientError(f"cannot reach the controller at {url}: {e} (is `lisp-controller serve` "
                          f"running? set --url or {URL_ENV})", 3) from None
    except (ssl.SSLError, socket.gaierror) as e:  # before anything was sent, too
        raise ClientError(f"cannot reach the controller at {url}: {e} (is `lisp-controller serve` "
                          f"running? set --url or {URL_ENV})", 3) from None
    except (OSError, http.client.HTTPException) as e:  # reset, closed early, not HTTP
        said = " ".join(str(e).split())[:80] or "no answer"
        raise ClientError(f"the controller at {url} broke off the exchange ({type(e).__name__}: "
                          f"{said}){unsure}", 3) from None
    except ValueError as e:  # the URL (its host, say) or the answer's JSON
        raise ClientError(f"{method} {url.rstrip('/')}{path}: {e}",
                          2 if isinstance(e, http.client.InvalidURL) else 3) from None
    if status < 400 or status in answers:
        return out
    try:
        err = out["error"]
        where = f"{err['field']}: " if err.get("field") else ""
        message = f"{status} {where}{err['message']}"
    except (KeyError, TypeError, AttributeError):
        message = f"{status} {http.client.responses.get(status, 'error')}"
    raise ClientError(message, 1)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*map(str, r)).rstrip() for r in [header, *rows])


def _rlocs(m: dict) -> str:
    return ", ".join(f"{r['address']} ({r['priority']}/{r['weight']})" for r in m["rlocs"]) or "-"


def _mapping_rows(mappings: list[dict]) -> str:
    rows = [[m["iid"], m["eid"], _rlocs(m), "-" if m["ttl"] is None else f"{m['ttl']}m",
             "-" if m.get("expires_in") is None else f"{m['expires_in']:.0f}s",
             m["action"] if not m["rlocs"] else "-", m["source"]] for m in mappings]
    return table(rows, ["IID", "EID", "RLOCS (priority/weight)", "TTL", "EXPIRES", "ACTION", "SOURCE"])


def _bridges(result: dict) -> str:
    parts = [f"{b['bridge']} {b['status']}" for b in result.get("bridges", [])]
    errors = [e for b in result.get("bridges", []) for e in b.get("errors", [])]
    text = "bridges: " + (", ".join(parts) or "none configured")
    return text + "".join(f"\n  {e}" for e in errors)


def _parse_rloc(text: str) -> dict:
    """ADDRESS[,PRIORITY[,WEIGHT]]"""
    parts = text.split(",")
    rloc: dict = {"address": parts[0]}
    try:
        if len(parts) > 1:
            rloc["priority"] = int(parts[1])
        if len(parts) > 2:
            rloc["weight"] = int(parts[2])
    except ValueError:
        raise ClientError(f"--rloc {text!r}: expected ADDRESS[,PRIORITY[,WEIGHT]]", 2) from None
    if len(parts) > 3:
        raise ClientError(f"--rloc {text!r}: expected ADDRESS[,PRIORITY[,WEIGHT]]", 2)
    return rloc


def _read_json_file(path: str) -> object:
    """The file's JSON; a key twice in one object is refused here, since
    the file's reader would keep only the last and the API never see it."""
    try:
        with (sys.stdin if path == "-" else open(path)) as f:
            return json.load(f, object_pairs_hook=unique_keys)
    except OSError as e:
        raise ClientError(f"{path}: {e.strerror}", 2) from None
    except ModelError as e:
        raise ClientError(f"{path}: key {e.field!r} {e.problem}", 2) from None
    except ValueError as e:
        raise ClientError(f"{path}: not JSON: {e}", 2) from None


def _key_path(iid: int, eid: str) -> str:
    return f"/v1/mappings/{iid}/{urllib.parse.quote(eid, safe='/:')}"


def run(args) -> int:
    url = controller_url(args.url)

    def call(method: str, path: str, body: object = None, query: dict | None = None, bulk: bool = False,
             key: str | None = None, answers: tuple[int, ...] = ()):
        return request(url, method, path, body, query, args.timeout or (BULK_TIMEOUT if bulk else None),
                       key, answers)

    out = None
    if args.area == "health":
        out = call("GET", "/v1/health", answers=(503,))
        text = f"{out['status']}: {out['mappings']} mappings, {out['datapaths_connected']} of " \
               f"{out['datapaths_configured']} bridges connected" + "".join(f"\n  {p}" for p in out["problems"])
        if out["problems"]:
            print(json.dumps(out, indent=2) if args.json else text)
            return 1
    elif args.area == "metrics":
        print(call("GET", "/metrics"), end="")
        return 0
    elif args.area == "mapping":
        text, out = _mapping(args, call)
    elif args.area == "endpoint":
        text, out = _endpoint(args, call)
    elif args.area == "site":
        text, out = _site(args, call)
    else:
        text, out = _datapath(args, call)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(text)
    return 0


def _mapping(args, call):
    op = args.op
    if op == "list":
        return _mapping_list(args, call)
    if op == "get":
        out = call("GET", _key_path(args.iid, args.eid))
        return _mapping_rows([out["mapping"]]), out
    if op == "lookup":
        out = call("GET", "/v1/lookup", query={"iid": args.iid, "eid": args.address})
        if out["mapping"] is None:
            return f"{args.address} in IID {args.iid}: no mapping (miss: {out['miss_action']})", out
        return f"{args.address} in IID {args.iid} is served by\n" + _mapping_rows([out["mapping"]]), out
    if op in ("add", "set"):
        body = {"iid": args.iid, "eid": args.eid, "rlocs": [_parse_rloc(r) for r in args.rloc]}
        if args.ttl is not None:
            body["ttl"] = args.ttl
        if args.action is not None:
            body["action"] = args.action
        if op == "add":
            out = call("POST", "/v1/mappings", body)
            verb = "created"
        else:
            out = call("PUT", _key_path(args.iid, args.eid), body)
            verb = "set"
        return f"{verb} {args.iid}:{out['mapping']['eid']}; {_bridges(out)}", out
    if op == "delete":
        out = call("DELETE", _key_path(args.iid, args.eid))
        return f"deleted {args.iid}:{out['deleted']['eid']}; {_bridges(out)}", out
    data = _read_json_file(args.file)
    if isinstance(data, list):
        data = {"mappings": data}
    key = args.key or str(uuid.uuid4())
    if op == "bulk":
        out = call("POST", "/v1/mappings/bulk", data, bulk=True, key=key)
        return f"{out['put']} mappings set, {out['deleted']} deleted; {_bridges(out)}", out
    out = call("PUT", "/v1/mappings", data, bulk=True, key=key)  # replace
    return f"API mappings replaced: {out['before']} before, {out['mappings']} now; {_bridges(out)}", out


def _mapping_list(args, call):
    """One page of the map-cache, filtered and sorted by the controller
    with the same query parameters as the status page; --all asks page
    after page (each consistent in itself, not with each other while
    the map-cache changes)."""
    query = {"iid": args.iid, "prefix": args.prefix, "source": args.source, "eid_contains": args.eid_contains,
             "rloc_contains": args.rloc_contains, "q": args.search, "sort": args.sort,
             "order": "desc" if args.desc else None, "offset": args.offset,
             "limit": PAGE_MAX if args.all and args.limit is None else args.limit}
    out = call("GET", "/v1/mappings", query=query)
    if args.all:
        rows = out["mappings"]
        while rows and out["offset"] + len(out["mappings"]) < out["total"]:
            out = call("GET", "/v1/mappings", query={**query, "offset": out["offset"] + len(out["mappings"])})
            if not out["mappings"]:
                break
            rows += out["mappings"]
        out = {**out, "offset": args.offset or 0, "mappings": rows}
    shown, first, total = len(out["mappings"]), out["offset"], out["total"]
    if shown == total:
        footer = f"{total} mappings"
    else:
        footer = (f"mappings {first + 1 if shown else first}-{first + shown} of {total}"
                  + (f" (--offset {first + shown} for more, or --all)" if first + shown < total else ""))
    return _mapping_rows(out["mappings"]) + "\n" + footer, out


def _endpoint(args, call):
    if args.op == "list":
        out = call("GET", "/v1/endpoints", query={"bridge": args.bridge})
        rows = [[e["bridge"], e["port"], e["mac"], e["iid"], ", ".join(e["eids"]), e["source"]]
                for e in out["endpoints"]]
        return table(rows, ["BRIDGE", "PORT", "MAC", "IID", "EIDS", "SOURCE"]), out
    if args.op == "add":
        out = call("POST", "/v1/endpoints", {"bridge": args.bridge, "port": args.port, "mac": args.mac,
                                                     "iid": args.iid, "eids": args.eid})
        return f"added {args.port} on {out['endpoint']['bridge']}; {_bridges(out)}", out
    out = call("DELETE", f"/v1/endpoints/{urllib.parse.quote(args.bridge, safe='')}/"
                                 f"{urllib.parse.quote(args.port, safe='')}")
    return f"deleted {args.port} on {out['deleted']['bridge']}; {_bridges(out)}", out


def _datapath(args, call):
    if args.op == "list":
        out = call("GET", "/v1/datapaths")
        rows = []
        for d in out["datapaths"]:
            state = "up" if d["connected"] else "down"
            if d["connected"] and not d["configured"]:
                state = "up (not in config)"
            flows = "-" if d["flows_desired"] is None else f"{d['flows_installed']}/{d['flows_desired']}"
            rows.append([d["bridge"], d["datapath_id"] or "-", d["name"] or "-", state, d["rloc"] or "-",
                         d["tunnel_profile"] or "-", flows, len(d["errors"])])
        return table(rows, ["BRIDGE", "DATAPATH", "NAME", "STATE", "RLOC", "PROFILE", "FLOWS", "ERRORS"]), out
    ref = urllib.parse.quote(args.bridge, safe="")
    if args.op == "show":
        out = call("GET", f"/v1/datapaths/{ref}")
        d = out["datapath"]
        lines = [f"{k}: {v}" for k, v in d.items() if k not in ("ports", "errors")]
        lines.append("ports: " + (", ".join(f"{n}={p}" for n, p in d["ports"].items()) or "-"))
        lines += ["errors:"] + [f"  {e}" for e in d["errors"]] if d["errors"] else ["errors: none"]
        return "\n".join(lines), out
    out = call("GET", f"/v1/datapaths/{ref}/flows")
    note = "" if out["connected"] else "# not connected: flows that need port numbers are left out\n"
    groups = "".join(f"# group (ovs-ofctl add-group): {g}\n" for g in out.get("groups", []))
    return note + groups + "\n".join(out["flows"]), out


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 86400:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected seconds between 0 and 86400, got {text!r}")
    return value


def _iid(text: str) -> int:
    try:
        return parse_decimal(text, "--iid", 0, IID_MAX)
    except ModelError as e:
        raise argparse.ArgumentTypeError(e.problem) from None


def _count(text: str) -> int:
    """A number of mappings (the controller checks the range)."""
    try:
        return parse_decimal(text, "count", 0, 2**63 - 1)
    except ModelError as e:
        raise argparse.ArgumentTypeError(e.problem) from None


def _site(args, call):
    if args.op == "list":
        out = call("GET", "/v1/sites")
        rows = [[s["name"], ", ".join(f"{p['iid']}:{p['eid']}" + ("+" if p["accept_more_specifics"] else "")
                                      for p in s["prefixes"]),
                 ", ".join(f"{k['key_id']}/{k['alg']}" for k in s["keys"]), "yes" if s["proxy_reply"] else "no",
                 f"{s['registered']}/{s['max_registrations']}"] for s in out["sites"]]
        text = table(rows, ["SITE", "PREFIXES (+ more specifics)", "KEYS", "PROXY", "REGISTERED"])
        return (text if rows else "no sites (the Map-Server is off or has none configured)"), out
    out = call("GET", f"/v1/sites/{urllib.parse.quote(args.name, safe='')}")
    s = out["site"]
    lines = [f"site {s['name']}: {s['registered']} of at most {s['max_registrations']} EID-prefixes registered; "
             f"proxy reply: {'always' if s['proxy_reply'] else 'when the ETR asks'}",
             "keys: " + ", ".join(f"key-id {k['key_id']} ({k['alg']})" for k in s["keys"]),
             "prefixes: " + ", ".join(f"{p['iid']}:{p['eid']}" + (" and more specific" if p["accept_more_specifics"]
                                                                   else "") for p in s["prefixes"])]
    rows = [[r["iid"], r["eid"], _rlocs(r) if r["rlocs"] else r["action"], r["xtr"], r["last_registered"],
             f"{r['expires_in']:.0f}s", ("proxy" if r["proxy_reply"] else "-")
             + (f", hidden by {r['hidden_by']}" if r["hidden_by"] else "")] for r in s["registrations"]]
    lines.append(table(rows, ["IID", "EID", "RLOCS (priority/weight)", "XTR", "LAST REGISTERED", "EXPIRES",
                              "NOTES"]))
    return "\n".join(lines), out


def add_parsers(sub) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"controller API (default ${URL_ENV} or {DEFAULT_URL})")
    common.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                        help=f"how long to wait for the controller (default {READ_TIMEOUT:g} s for reads, "
                             f"{WRITE_TIMEOUT:g} s for changes, {BULK_TIMEOUT:g} s for bulk and replace)")
    common.add_argument("--json", action="store_true", help="print the API's JSON")

    def area(name, help_text):
        p = sub.add_parser(name, help=help_text, parents=[common])
        p.set_defaults(func=_main, area=name)
        return p

    area("health", "is the controller up")
    area("metrics", "Prometheus metrics")

    m = area("mapping", "the map-cache").add_subparsers(dest="op", required=True)
    p = m.add_parser("list", parents=[common])
    p.add_argument("--iid", type=_iid)
    p.add_argument("--prefix", help="only mappings inside this prefix")
    p.add_argument("--source", help="config, endpoint, api, registered:SITE or map-resolver")
    p.add_argument("--eid-contains", metavar="TEXT", help="only EID prefixes containing this text")
    p.add_argument("--rloc-contains", metavar="TEXT", help="only mappings with an RLOC containing this text")
    p.add_argument("--search", metavar="WORDS", help="every word in IID, EID, RLOCs, action or source "
                                                     "(as the status page's search)")
    p.add_argument("--sort", choices=["prefix", "eid", "rlocs", "ttl", "action", "source", "packets", "bytes"],
                   help="order (default prefix: IID, then prefix)")
    p.add_argument("--desc", action="store_true", help="in descending order")
    p.add_argument("--limit", type=_count, help="at most this many (default 1000, at most 10000)")
    p.add_argument("--offset", type=_count, help="skip this many")
    p.add_argument("--all", action="store_true", help="every matching mapping, page after page")
    for op in ("get", "delete"):
        p = m.add_parser(op, parents=[common])
        p.add_argument("eid", help="EID prefix, e.g. 10.2.0.0/16")
        p.add_argument("--iid", type=_iid, required=True)
    p = m.add_parser("lookup", parents=[common], help="which mapping serves an address")
    p.add_argument("address")
    p.add_argument("--iid", type=_iid, required=True)
    for op, help_text in (("add", "create (fails if it exists)"), ("set", "create or replace")):
        p = m.add_parser(op, parents=[common], help=help_text)
        p.add_argument("eid", help="EID prefix, e.g. 10.2.0.0/16")
        p.add_argument("--iid", type=_iid, required=True)
        p.add_argument("--rloc", action="append", default=[], metavar="ADDRESS[,PRIORITY[,WEIGHT]]")
        p.add_argument("--ttl", type=int, help="minutes")
        p.add_argument("--action", choices=["no-action", "native-forward", "send-map-request", "drop"],
                       help="for a negative mapping (no --rloc)")
    for op, help_text in (("bulk", "set and delete many: JSON {mappings: [...], delete: [...]}"),
                          ("replace", "replace every API mapping: JSON {mappings: [...]}")):
        p = m.add_parser(op, parents=[common], help=help_text)
        p.add_argument("file", help="JSON file, or - for standard input")
        p.add_argument("--key", help="Idempotency-Key (default: a new one): to send a request again whose "
                                     "answer was lost")

    e = area("endpoint", "local endpoints of the bridges").add_subparsers(dest="op", required=True)
    p = e.add_parser("list", parents=[common])
    p.add_argument("--bridge")
    p = e.add_parser("add", parents=[common])
    for name in ("--bridge", "--port", "--mac"):
        p.add_argument(name, required=True)
    p.add_argument("--iid", type=_iid, required=True)
    p.add_argument("--eid", action="append", required=True, help="EID address (repeat)")
    p = e.add_parser("delete", parents=[common])
    p.add_argument("--bridge", required=True)
    p.add_argument("--port", required=True)

    s = area("site", "the Map-Server's sites and their registrations").add_subparsers(dest="op", required=True)
    s.add_parser("list", parents=[common])
    s.add_parser("show", parents=[common]).add_argument("name", help="site name")

    d = area("datapath", "bridges").add_subparsers(dest="op", required=True)
    d.add_parser("list", parents=[common])
    for op in ("show", "flows"):
        d.add_parser(op, parents=[common]).add_argument("bridge", help="label, name or datapath ID")


def _main(args) -> int:
    try:
        return run(args)
    except ClientError as e:
        print("error: " + " ".join(str(e).splitlines()), file=sys.stderr)  # always one line
        return e.code
