"""The ``[lisp]`` section and the ``[[site]]`` tables of the config file:
the LISP control listener and the sites this controller is the Map-Server of
(docs/control-plane.rst).

Kept apart from the config package (``lisp_controller/config/``) so the
control plane's settings have one home; ``parse_lisp`` collects problems in
the same one-line form.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from lisp_controller.lisp.auth import ALG_HMAC_SHA_1, ALG_HMAC_SHA_256, AuthKey
from lisp_controller.lisp.messages import LISP_CONTROL_PORT
from lisp_controller.model import (IPAddress, ModelError, Prefix, parse_action, parse_address, parse_bool, parse_iid,
                                   parse_int, parse_prefix)

ALGORITHMS = {"sha1": ALG_HMAC_SHA_1, "sha256": ALG_HMAC_SHA_256}
ALGORITHM_NAMES = {v: k for k, v in ALGORITHMS.items()}
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")   # it appears in sources and URLs

_LISP_KEYS = {"listen", "port", "negative_ttl", "negative_action", "register_rate", "request_rate",
              "max_sources", "map_servers", "map_resolvers", "control_address", "register_interval",
              "proxy_reply", "want_map_notify", "advertise_gpe"}   # the last seven: parse_xtr
_SITE_KEYS = {"name", "keys", "prefixes", "proxy_reply", "max_registrations"}
_KEY_KEYS = {"key_id", "alg", "key", "key_env"}
_PREFIX_KEYS = {"iid", "eid", "accept_more_specifics"}


@dataclass(frozen=True)
class SitePrefix:
    """An EID-prefix a site may register in one IID; more specific prefixes
    inside it only if ``accept_more_specifics``."""

    iid: int
    eid: Prefix
    accept_more_specifics: bool = False


@dataclass(frozen=True)
class Site:
    """A LISP site whose ETRs register with us (RFC 9301 section 8.2).

    ``keys`` are the shared secrets its Map-Registers may be signed with
    (key-id and alg-id as on the wire). ``proxy_reply``: answer Map-Requests
    for its EIDs ourselves even when its ETRs did not ask for it (the P bit
    of their Map-Registers); otherwise requests go to the ETR.
    ``max_registrations`` caps the EID-prefixes it may hold at once."""

    name: str
    keys: tuple[AuthKey, ...]
    prefixes: tuple[SitePrefix, ...]
    proxy_reply: bool = False
    max_registrations: int = 10_000

    def key(self, key_id: int, alg_id: int) -> AuthKey | None:
        return next((k for k in self.keys if k.key_id == key_id and k.alg_id == alg_id), None)

    @property
    def source(self) -> str:
        """The owner name its registered mappings carry in the map-cache."""
        return f"registered:{self.name}"


@dataclass(frozen=True)
class LispSettings:
    """The control listener (off unless ``listen`` is set) and what it answers.

    Rates are datagrams per second per source address (a token bucket whose
    burst is one second's worth); ``max_sources`` bounds how many sources
    are tracked at once. ``negative_ttl`` (minutes) and ``negative_action``
    go into negative Map-Replies for EIDs outside every known prefix."""

    listen: str | None = None
    port: int = LISP_CONTROL_PORT
    negative_ttl: int = 15
    negative_action: str = "native-forward"
    register_rate: float = 20.0
    request_rate: float = 1000.0
    max_sources: int = 65536
    sites: tuple[Site, ...] = field(default_factory=tuple)

    @property
    def enabled(self) -> bool:
        return self.listen is not None


def parse_lisp(data: dict, problems: list[str], where: str) -> LispSettings:
    """The ``[lisp]`` table and ``[[site]]`` array of a parsed TOML document;
    every problem is appended to ``problems`` as "where: key: what"."""
    raw = data.get("lisp", {})
    if not isinstance(raw, dict):
        problems.append(f"{where}: lisp: must be a table ([lisp])")
        raw = {}
    for key in sorted(set(raw) - _LISP_KEYS):
        problems.append(f"{where}: lisp.{key}: unknown key")
    values: dict = {}
    parsers = {
        "listen": lambda v, f: str(parse_address(v, f)),
        "port": lambda v, f: parse_int(v, f, 1, 65535),
        "negative_ttl": lambda v, f: parse_int(v, f, 0, 7 * 24 * 60),
        "negative_action": parse_action,
        "register_rate": _parse_rate,
        "request_rate": _parse_rate,
        "max_sources": lambda v, f: parse_int(v, f, 16, 10_000_000),
    }
    for key, parse in parsers.items():
        if key in raw:
            try:
                values[key] = parse(raw[key], f"lisp.{key}")
            except ModelError as e:
                problems.append(f"{where}: {e}")
    sites = _parse_sites(data.get("site", []), problems, where)
    if sites and "listen" not in raw:
        problems.append(f"{where}: site: sites need the control listener: set lisp.listen")
    return LispSettings(**values, sites=tuple(sites))


def _parse_rate(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 10_000_000:
        raise ModelError(field, f"must be datagrams per second per source, above 0, got {value!r}")
    return float(value)


def _parse_sites(raw: object, problems: list[str], where: str) -> list[Site]:
    if not isinstance(raw, list):
        problems.append(f"{where}: site: must be an array of tables ([[site]])")
        return []
    sites: list[Site] = []
    names: set[str] = set()
    owners: dict[tuple, str] = {}
    for i, item in enumerate(raw):
        site = _parse_site(item, f"site[{i}]", problems, where)
        if site is None:
            continue
        if site.name in names:
            problems.append(f"{where}: site[{i}].name: {site.name!r} names two sites")
            continue
        names.add(site.name)
        for prefix in site.prefixes:
            key = (prefix.iid, prefix.eid)
            if key in owners:
                problems.append(f"{where}: site[{i}].prefixes: {prefix.iid}:{prefix.eid} is also a prefix of "
                                f"site {owners[key]!r} (a registration must belong to one site)")
            owners[key] = site.name
        sites.append(site)
    return sites


def _parse_site(raw: object, field: str, problems: list[str], where: str) -> Site | None:
    if not isinstance(raw, dict):
        problems.append(f"{where}: {field}: must be a table ([[site]])")
        return None
    before = len(problems)
    for key in sorted(set(raw) - _SITE_KEYS):
        problems.append(f"{where}: {field}.{key}: unknown key")
    name = raw.get("name")
    if not isinstance(name, str) or not SITE_NAME.match(name):
        problems.append(f"{where}: {field}.name: is required: letters, digits, '.', '_' or '-' "
                        f"(at most 64), got {name!r}")
    keys = _items(raw, "keys", field, problems, where, _parse_key)
    seen_ids: set[int] = set()
    for j, key in enumerate(keys):
        if key.key_id in seen_ids:
            problems.append(f"{where}: {field}.keys[{j}].key_id: key-id {key.key_id} is given twice")
        seen_ids.add(key.key_id)
    prefixes = _items(raw, "prefixes", field, problems, where, _parse_site_prefix)
    proxy_reply, max_registrations = False, Site.max_registrations
    try:
        if "proxy_reply" in raw:
            proxy_reply = parse_bool(raw["proxy_reply"], f"{field}.proxy_reply")
        if "max_registrations" in raw:
            max_registrations = parse_int(raw["max_registrations"], f"{field}.max_registrations", 1, 10_000_000)
    except ModelError as e:
        problems.append(f"{where}: {e}")
    if len(problems) > before:
        return None
    return Site(name, tuple(keys), tuple(prefixes), proxy_reply, max_registrations)


def _items(raw: dict, key: str, field: str, problems: list[str], where: str, parse) -> list:
    """A required, non-empty array of tables, each parsed by ``parse``."""
    items = raw.get(key)
    if not isinstance(items, list) or not items:
        problems.append(f"{where}: {field}.{key}: is required: a non-empty array of tables")
        return []
    out = []
    for j, item in enumerate(items):
        try:
            out.append(parse(item, f"{field}.{key}[{j}]"))
        except ModelError as e:
            problems.append(f"{where}: {e}")
    return out


def _table(value: object, field: str, allowed: set[str]) -> dict:
    if not isinstance(value, dict):
        raise ModelError(field, f"must be a table, got {value!r}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ModelError(f"{field}.{unknown[0]}", "unknown key")
    return value


def _parse_key(value: object, field: str) -> AuthKey:
    """{key_id, alg, key | key_env}: the secret from the file or, better,
    from an environment variable, so the config can be shown around."""
    raw = _table(value, field, _KEY_KEYS)
    if "key_id" not in raw:
        raise ModelError(f"{field}.key_id", "is required (1 to 255)")
    key_id = parse_int(raw["key_id"], f"{field}.key_id", 1, 255)
    alg = raw.get("alg", "sha256")
    if alg not in ALGORITHMS:
        raise ModelError(f"{field}.alg", f"must be sha1 or sha256, got {alg!r}")
    if ("key" in raw) == ("key_env" in raw):
        raise ModelError(f"{field}.key", "give exactly one of key and key_env")
    if "key" in raw:
        secret = raw["key"]
        if not isinstance(secret, str) or not secret:
            raise ModelError(f"{field}.key", "must be a non-empty string")
    else:
        name = raw["key_env"]
        if not isinstance(name, str) or not name:
            raise ModelError(f"{field}.key_env", f"must be an environment variable name, got {name!r}")
        secret = os.environ.get(name, "")
        if not secret:
            raise ModelError(f"{field}.key_env", f"environment variable {name} is not set or empty")
    return AuthKey(key_id, secret.encode(), ALGORITHMS[alg])


def _parse_site_prefix(value: object, field: str) -> SitePrefix:
    raw = _table(value, field, _PREFIX_KEYS)
    for required in ("iid", "eid"):
        if required not in raw:
            raise ModelError(f"{field}.{required}", "is required")
    more = parse_bool(raw.get("accept_more_specifics", False), f"{field}.accept_more_specifics")
    return SitePrefix(parse_iid(raw["iid"], f"{field}.iid"), parse_prefix(raw["eid"], f"{field}.eid"), more)


# -- the xTR role: registering our EIDs and resolving misses ----------------------
# (docs/control-plane.rst, "xTR: configuration"); its keys share [lisp] with
# the listener's, and parse_xtr reads only them.

DEFAULT_REGISTER_INTERVAL = 60.0  # seconds (RFC 9301 section 8.2: every 60 s)
XTR_KEYS = frozenset({"map_servers", "map_resolvers", "control_address", "register_interval",
                      "proxy_reply", "want_map_notify", "advertise_gpe"})
_MAP_SERVER_KEYS = frozenset({"address", "key_id", "key", "alg"})
MAX_PEERS = 16


@dataclass(frozen=True)
class MapServerPeer:
    """A Map-Server we register with, and the key it knows us by."""

    address: IPAddress
    key: AuthKey

    def __str__(self) -> str:
        return str(self.address)


@dataclass(frozen=True)
class XtrSettings:
    map_servers: tuple[MapServerPeer, ...] = ()
    map_resolvers: tuple[IPAddress, ...] = ()
    # Source of our Map-Registers and Map-Requests and the ITR-RLOC that
    # Map-Replies come back to; None = the OpenFlow listen address.
    control_address: IPAddress | None = None
    register_interval: float = DEFAULT_REGISTER_INTERVAL
    proxy_reply: bool = True  # the P bit: the Map-Server answers Map-Requests for our EIDs
    want_map_notify: bool = True  # the M bit: each registration is confirmed
    # Locators of lisp-gpe bridges carry the Encapsulation Format LCAF
    # (RFC 8060 section 5.6) with the VXLAN-GPE bit: OVS accepts only
    # LISP-GPE (docs/control-plane.rst, "Interop").
    advertise_gpe: bool = True

    @property
    def registers(self) -> bool:
        return bool(self.map_servers)

    @property
    def resolves(self) -> bool:
        return bool(self.map_resolvers)

    @property
    def active(self) -> bool:
        return self.registers or self.resolves


def _parse_map_server(raw: object, field: str) -> MapServerPeer:
    if not isinstance(raw, dict):
        raise ModelError(field, f"must be a table {{address, key_id, key}}, got {raw!r}")
    for key in sorted(set(raw) - _MAP_SERVER_KEYS):
        raise ModelError(f"{field}.{key}", "unknown key")
    for key in ("address", "key_id", "key"):
        if key not in raw:
            raise ModelError(f"{field}.{key}", "is required")
    address = parse_address(raw["address"], f"{field}.address")
    key_id = parse_int(raw["key_id"], f"{field}.key_id", 0, 255)
    secret = raw["key"]
    if not isinstance(secret, str) or not secret:
        raise ModelError(f"{field}.key", "must be a non-empty string (the shared password)")
    alg = raw.get("alg", "sha256")  # as a [[site]] key's
    if alg not in ALGORITHMS:
        raise ModelError(f"{field}.alg", f"must be one of {', '.join(ALGORITHMS)}, got {alg!r}")
    return MapServerPeer(address, AuthKey(key_id, secret.encode(), ALGORITHMS[alg]))


def _list(raw: dict, key: str) -> list:
    value = raw.get(key, [])
    if not isinstance(value, list):
        raise ModelError(f"lisp.{key}", "must be a list")
    if len(value) > MAX_PEERS:
        raise ModelError(f"lisp.{key}", f"at most {MAX_PEERS} entries")
    return value


def parse_xtr(raw: dict, openflow_host: str | None, problems: list[str], where: str) -> XtrSettings:
    """The xTR keys of `[lisp]` (`XTR_KEYS`); other keys of the section
    belong to other roles and are left to them. Problems are appended."""
    values: dict = {}

    def attempt(parse) -> None:
        try:
            parse()
        except ModelError as e:
            problems.append(f"{where}: {e}")

    def servers() -> None:
        out, seen = [], set()
        for i, item in enumerate(_list(raw, "map_servers")):
            ms = _parse_map_server(item, f"lisp.map_servers[{i}]")
            if ms.address in seen:
                raise ModelError(f"lisp.map_servers[{i}].address", f"{ms.address} is listed twice")
            seen.add(ms.address)
            out.append(ms)
        values["map_servers"] = tuple(out)

    def resolvers() -> None:
        out = [parse_address(a, f"lisp.map_resolvers[{i}]") for i, a in enumerate(_list(raw, "map_resolvers"))]
        if len(set(out)) != len(out):
            raise ModelError("lisp.map_resolvers", "an address is listed twice")
        values["map_resolvers"] = tuple(out)

    def control() -> None:
        if "control_address" in raw:
            values["control_address"] = parse_address(raw["control_address"], "lisp.control_address")

    def interval() -> None:
        if "register_interval" in raw:
            value = raw["register_interval"]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 3600:
                raise ModelError("lisp.register_interval", f"must be seconds from 1 to 3600, got {value!r}")
            values["register_interval"] = float(value)

    def flags() -> None:
        for key in ("proxy_reply", "want_map_notify", "advertise_gpe"):
            if key in raw:
                values[key] = parse_bool(raw[key], f"lisp.{key}")

    for step in (servers, resolvers, control, interval, flags):
        attempt(step)
    settings = XtrSettings(**values)
    if settings.active and settings.control_address is None:
        if openflow_host in (None, "0.0.0.0", "::"):
            problems.append(f"{where}: lisp.control_address: is required with map_servers or "
                            "map_resolvers when controller.listen is a wildcard (it is the "
                            "ITR-RLOC Map-Replies come back to)")
        else:
            settings = XtrSettings(**{**values, "control_address": parse_address(openflow_host, "controller.listen")})
    for ms in settings.map_servers:
        if settings.control_address is not None and ms.address.version != settings.control_address.version:
            problems.append(f"{where}: lisp.map_servers: {ms.address} and the control address "
                            f"{settings.control_address} are of different IP versions")
    for mr in settings.map_resolvers:
        if settings.control_address is not None and mr.version != settings.control_address.version:
            problems.append(f"{where}: lisp.map_resolvers: {mr} and the control address "
                            f"{settings.control_address} are of different IP versions")
    return settings
