"""TOML configuration, validated once into typed values.

Every problem is collected, not just the first, so an operator fixes a bad
file in one pass; each is one line: file, key, what is wrong.
"""
from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from lisp_controller.errors import LispControllerError
from lisp_controller.lisp.config import LispSettings, XtrSettings, parse_lisp, parse_xtr
from lisp_controller.model import (Bridge, Endpoint, Mapping, ModelError, Overlay, datapath_id_of, parse_action,
                                   parse_address, parse_bool, parse_gateway, parse_iid, parse_int,
                                   parse_interface_name, parse_mac, parse_rloc_address)
from lisp_controller.openflow.tls import TlsPeer, parse_tls_peer
from lisp_controller.pipeline.profiles import DEFAULT_PROFILE, DEFAULT_UNDERLAY_MTU, PROFILES


class ConfigError(LispControllerError):
    """The config file has problems: every one of them, one line each."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ApiSettings:
    host: str = "127.0.0.1"  # local only unless the operator says otherwise
    port: int = 8080
    token: str | None = None  # bearer token for changes; TOKEN_ENV overrides
    max_body_bytes: int = 64 * 1024 * 1024  # 100,000 mappings are about 11 MB
    confirm_timeout: float = 5.0  # how long a write waits for the bridges' barriers
    # Seconds a client may keep the API waiting on one read or write (a
    # slow or idle client holds one greenthread and one socket until then).
    client_timeout: float = 30.0
    # Seconds after start during which /v1/health is still ok with no
    # configured bridge connected yet (they connect within a few seconds).
    health_grace: float = 30.0
    tls_cert: str | None = None  # with tls_key: the API speaks HTTPS only
    tls_key: str | None = None


@dataclass(frozen=True)
class OpenFlowTls:
    """Key and certificate of the controller, and the CA that signed the
    switches' certificates: with these, OpenFlow is TLS only."""

    key: str
    cert: str
    ca: str


@dataclass(frozen=True)
class EtcdSettings:
    """`[store] backend = "etcd"`: the cluster several controllers share
    (docs/etcd.rst)."""

    endpoints: tuple[str, ...]  # client URLs, http:// or https://
    prefix: str = "/lisp-controller/"  # every key of this overlay starts with it
    timeout: float = 5.0  # seconds one request to etcd may take
    ca: str | None = None  # https: the CA that signed the members' certificates
    cert: str | None = None  # client certificate and key, if the cluster asks for one
    key: str | None = None
    user: str | None = None  # etcd authentication; ETCD_PASSWORD_ENV overrides password
    password: str | None = None


@dataclass(frozen=True)
class ClusterSettings:
    """`[cluster]`: this instance among the controllers that share an etcd
    store, and how soon the others notice it gone (docs/etcd.rst, "Bridge
    ownership")."""

    instance: str  # unique among the instances; owner keys name it
    # Seconds the instance's etcd lease lives without a keepalive: the
    # failover time after a kill -9 is about this plus 0.1 to 0.5 s (etcd's
    # lease check). etcd grants at least 1.5 election timeouts, rounded up:
    # 1 s needs members with --election-timeout of at most 666 ms; with
    # etcd's default (1000 ms) it grants 2 s, and the instance says so at
    # start (docs/etcd.rst, "Failover time").
    lease_ttl: int = 1


TOKEN_ENV = "LISP_CONTROLLER_TOKEN"
ETCD_PASSWORD_ENV = "LISP_CONTROLLER_ETCD_PASSWORD"
DEFAULT_STORE = "/var/lib/lisp-controller/store.db"
DEFAULT_RECONCILE_INTERVAL = 60.0
MAX_RECONCILE_INTERVAL = 86400.0
DEFAULT_HANDSHAKE_TIMEOUT = 5.0
DEFAULT_MAX_HANDSHAKES = 256


@dataclass(frozen=True)
class Config:
    source: str
    openflow_host: str
    openflow_port: int
    overlay: Overlay
    api: ApiSettings = ApiSettings()
    store_path: str = DEFAULT_STORE
    # Seconds between deep checks of every bridge (0: only on changes and
    # connects): catches flows deleted, added or edited behind our back.
    reconcile_interval: float = DEFAULT_RECONCILE_INTERVAL
    tls: OpenFlowTls | None = None
    etcd: EtcdSettings | None = None  # None: the SQLite store at store_path
    # The LISP control listener and the Map-Server's sites (lisp/config.py).
    lisp: LispSettings = LispSettings()
    # Seconds a new OpenFlow connection has to finish its handshake (TLS,
    # HELLO, an admitted FEATURES_REPLY), and how many may be at it
    # at once: a connection that never says who it is must not hold a
    # socket forever (docs/reliability.rst, "OpenFlow admission").
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    max_handshakes: int = DEFAULT_MAX_HANDSHAKES
    # Datapath ID -> the certificate its switch must present (with TLS).
    tls_peers: dict[int, TlsPeer] = field(default_factory=dict)
    xtr: XtrSettings = XtrSettings()  # [lisp]'s xTR keys: registration and resolution (lisp/config.py)
    cluster: ClusterSettings | None = None  # with an etcd store only: who this instance is


_TLS_KEYS = ("tls_key", "tls_cert", "tls_ca")
_CONTROLLER_KEYS = {"listen", "port", "miss_action", "reconcile_interval", "handshake_timeout",
                    "max_handshakes", *_TLS_KEYS}
_STORE_KEYS = {"backend", "path", "endpoints", "prefix", "timeout", "ca", "cert", "key", "user", "password"}
_ETCD_KEYS = _STORE_KEYS - {"backend", "path"}
_BRIDGE_KEYS = {"datapath_id", "name", "rloc", "tunnel_port", "tunnel_profile", "iid",
                "router_mac", "endpoint", "proxy_arp", "gateway", "underlay_mtu", "too_big_without_df",
                "tls_peer"}
# An underlay below IPv6's minimum link MTU could not carry IPv6 RLOCs, and
# one above 65535 does not exist (docs/mtu.rst).
MIN_UNDERLAY_MTU, MAX_UNDERLAY_MTU = 1280, 65535
TOO_BIG_WITHOUT_DF = ("drop", "fragment")
_TOP_KEYS = {"controller", "api", "store", "bridge", "mapping", "lisp", "site", "cluster"}
_CLUSTER_KEYS = {"instance", "lease_ttl"}
_INSTANCE_CHARS = re.compile(r"[A-Za-z0-9._:@-]{1,64}")
MAX_LEASE_TTL = 60


def parse_datapath_id(value: object, field: str = "datapath_id") -> int:
    """16 hex digits as `ovs-ofctl show` prints them (colons and 0x allowed),
    or an integer."""
    if isinstance(value, int) and not isinstance(value, bool):
        dpid = value
    elif isinstance(value, str):
        dpid = datapath_id_of(value)
        if dpid is None:
            raise ModelError(field, f"{value!r} is not a hexadecimal datapath ID")
    else:
        raise ModelError(field, f"must be a hex string like '00008ad828ce7949', got {value!r}")
    if not 0 < dpid < 2**64:
        raise ModelError(field, f"{value!r} is out of range (1 to 2^64-1)")
    return dpid


def default_router_mac(identity: str) -> str:
    """A stable, locally administered MAC per bridge: VMs cache it, so it
    must not change when the controller restarts."""
    digest = hashlib.blake2b(identity.encode(), digest_size=4).digest()
    return "02:4c:" + ":".join(f"{b:02x}" for b in digest)


def _parse_profile(value: object, field: str) -> str:
    if value not in PROFILES:
        raise ModelError(field, f"must be one of {', '.join(PROFILES)}, got {value!r}")
    return value  # type: ignore[return-value]


def _parse_underlay_mtu(value: object, field: str) -> int:
    return parse_int(value, field, MIN_UNDERLAY_MTU, MAX_UNDERLAY_MTU)


def _parse_too_big_without_df(value: object, field: str) -> str:
    if value not in TOO_BIG_WITHOUT_DF:
        raise ModelError(field, f"must be one of {', '.join(TOO_BIG_WITHOUT_DF)}, got {value!r}")
    return value  # type: ignore[return-value]


def _parse_bridge(raw: object, field: str, problems: list[str], where: str) -> Bridge | None:
    def problem(e: ModelError) -> None:
        problems.append(f"{where}: {e}")

    if not isinstance(raw, dict):
        problems.append(f"{where}: {field}: must be a table ([[bridge]])")
        return None
    for key in sorted(set(raw) - _BRIDGE_KEYS):
        problems.append(f"{where}: {field}.{key}: unknown key")
    ok = True

    def optional(key: str, parse, default):
        """raw[key] parsed, or `default` when absent or bad (bad is reported)."""
        nonlocal ok
        if key not in raw:
            return default
        try:
            return parse(raw[key], f"{field}.{key}")
        except ModelError as e:
            problem(e)
            ok = False
            return default

    dpid = optional("datapath_id", parse_datapath_id, None)
    name = optional("name", parse_interface_name, None)  # the bridge's LOCAL port
    if dpid is None and name is None and "datapath_id" not in raw and "name" not in raw:
        problem(ModelError(field, "needs datapath_id or name to identify the bridge"))
        ok = False
    rloc = optional("rloc", parse_rloc_address, None)
    if "rloc" not in raw:
        problem(ModelError(f"{field}.rloc", "is required (the bridge's underlay address)"))
        ok = False
    tunnel_port = optional("tunnel_port", parse_interface_name, "lisp0")
    profile = optional("tunnel_profile", _parse_profile, DEFAULT_PROFILE)
    default_iid = optional("iid", parse_iid, None)
    label = name if name is not None else f"{dpid:016x}" if dpid is not None else field
    router_mac = optional("router_mac", parse_mac, default_router_mac(f"{dpid}/{name}"))
    proxy_arp = optional("proxy_arp", parse_bool, False)
    default_gateway = optional("gateway", parse_gateway, None)
    underlay_mtu = optional("underlay_mtu", _parse_underlay_mtu, DEFAULT_UNDERLAY_MTU)
    too_big_without_df = optional("too_big_without_df", _parse_too_big_without_df, "drop")
    # Endpoint problems are reported but keep the bridge for the
    # cross-bridge checks, so one run shows every problem.
    endpoints: list[Endpoint] = []
    raw_eps = raw.get("endpoint", [])
    if not isinstance(raw_eps, list):
        problems.append(f"{where}: {field}.endpoint: must be an array of tables ([[bridge.endpoint]])")
        raw_eps = []
    ports_seen: set[str] = set()
    for i, raw_ep in enumerate(raw_eps):
        ep_field = f"{field}.endpoint[{i}]"
        try:
            ep = Endpoint.parse(raw_ep, ep_field, default_iid, default_gateway)
        except ModelError as e:
            problem(e)
            continue
        if ep.port in ports_seen:
            problem(ModelError(f"{ep_field}.port", f"port {ep.port!r} already has an endpoint "
                               "on this bridge (one IID per port: list all its EIDs in one endpoint)"))
            continue
        ports_seen.add(ep.port)
        if ep.port == tunnel_port:
            problem(ModelError(f"{ep_field}.port", f"{ep.port!r} is the bridge's tunnel port"))
            continue
        endpoints.append(ep)
    if not ok:
        return None
    return Bridge(label, dpid, name, rloc, tunnel_port, profile, router_mac, tuple(endpoints),
                  proxy_arp, underlay_mtu, too_big_without_df)


def parse_config(data: dict, source: str = "<config>") -> Config:
    """Validate a parsed TOML document; raise ConfigError listing every problem."""
    problems: list[str] = []
    where = source
    for key in sorted(set(data) - _TOP_KEYS):
        problems.append(f"{where}: {key}: unknown key")

    ctl = data.get("controller", {})
    host, port, miss_action = "0.0.0.0", 6653, "drop"
    reconcile_interval = DEFAULT_RECONCILE_INTERVAL
    if not isinstance(ctl, dict):
        problems.append(f"{where}: controller: must be a table")
        ctl = {}
    for key in sorted(set(ctl) - _CONTROLLER_KEYS):
        problems.append(f"{where}: controller.{key}: unknown key")
    try:
        if "listen" in ctl:
            host = str(parse_address(ctl["listen"], "controller.listen"))
        if "port" in ctl:
            port = parse_int(ctl["port"], "controller.port", 1, 65535)
        if "miss_action" in ctl:
            miss_action = parse_action(ctl["miss_action"], "controller.miss_action")
    except ModelError as e:
        problems.append(f"{where}: {e}")
    if "reconcile_interval" in ctl:
        try:
            reconcile_interval = parse_interval(ctl["reconcile_interval"], "controller.reconcile_interval")
        except ModelError as e:
            problems.append(f"{where}: {e}")
    handshake_timeout, max_handshakes = DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_HANDSHAKES
    try:
        if "handshake_timeout" in ctl:
            handshake_timeout = _parse_seconds(ctl["handshake_timeout"], "controller.handshake_timeout", low=1)
        if "max_handshakes" in ctl:
            max_handshakes = parse_int(ctl["max_handshakes"], "controller.max_handshakes", 1, 65535)
    except ModelError as e:
        problems.append(f"{where}: {e}")

    lisp_raw = data.get("lisp", {})  # parse_lisp reports a [lisp] that is not a table
    xtr = parse_xtr(lisp_raw if isinstance(lisp_raw, dict) else {}, host, problems, where)
    if "miss_action" not in ctl and xtr.resolves:
        miss_action = "send-map-request"  # a miss is asked of the map-resolvers unless told otherwise

    base = Path(source).parent if source != "<config>" else Path(".")
    tls = None
    given = {k: _file(ctl[k], f"controller.{k}", base, problems, where) for k in _TLS_KEYS if k in ctl}
    if given and len(given) < len(_TLS_KEYS):
        problems.append(f"{where}: controller: TLS needs all of {', '.join(_TLS_KEYS)} "
                        f"(missing {', '.join(k for k in _TLS_KEYS if k not in given)})")
    elif given and all(given.values()):
        tls = OpenFlowTls(given["tls_key"], given["tls_cert"], given["tls_ca"])
    api = _parse_api(_table(data, "api", problems, where), problems, where, base)
    if api.port == port and _overlap(api.host, host):
        problems.append(f"{where}: api.port: {port} is also the OpenFlow port ([controller] port) on "
                        f"{host if host == api.host else f'{host} and {api.host}'}; they need different ports")
    store_path, etcd = _parse_store(_table(data, "store", problems, where), problems, where, base)
    cluster = _parse_cluster(_table(data, "cluster", problems, where), etcd is not None, api, problems, where)

    bridges: list[Bridge] = []
    raw_bridges = data.get("bridge", [])
    if not isinstance(raw_bridges, list):
        problems.append(f"{where}: bridge: must be an array of tables ([[bridge]])")
        raw_bridges = []
    tls_peers: dict[int, TlsPeer] = {}
    for i, raw in enumerate(raw_bridges):
        bridge = _parse_bridge(raw, f"bridge[{i}]", problems, where)
        if bridge is not None:
            bridges.append(bridge)
            if isinstance(raw, dict) and "tls_peer" in raw:
                peer = _parse_bridge_peer(raw["tls_peer"], bridge, f"bridge[{i}].tls_peer",
                                          tls is not None or bool(given), problems, where)
                if peer is not None:
                    tls_peers[bridge.datapath_id] = peer
    _check_bridges_unique(bridges, problems, where)
    if not raw_bridges and _needs_a_bridge(data):
        problems.append(f"{where}: bridge: no [[bridge]] given; the controller needs at least one "
                        "bridge to manage")

    mappings: list[Mapping] = []
    raw_maps = data.get("mapping", [])
    if not isinstance(raw_maps, list):
        problems.append(f"{where}: mapping: must be an array of tables ([[mapping]])")
        raw_maps = []
    seen: dict[tuple, int] = {}
    for i, raw in enumerate(raw_maps):
        try:
            m = Mapping.parse(raw, f"mapping[{i}]", source="config")
        except ModelError as e:
            problems.append(f"{where}: {e}")
            continue
        if m.key in seen:
            problems.append(f"{where}: mapping[{i}].eid: {m.eid} in IID {m.iid} is already "
                            f"mapped by mapping[{seen[m.key]}]")
        seen[m.key] = i
        mappings.append(m)

    lisp = parse_lisp(data, problems, where)
    if xtr.active and lisp.enabled and str(xtr.control_address) == lisp.listen:
        problems.append(f"{where}: lisp.control_address: {lisp.listen} is also lisp.listen; the xTR role "
                        "needs an address of its own (one socket per address and port 4342)")

    if problems:
        raise ConfigError(problems)
    return Config(source, host, port, Overlay(tuple(bridges), tuple(mappings), miss_action),
                  api, store_path, reconcile_interval, tls, etcd, lisp, handshake_timeout, max_handshakes, tls_peers, xtr,
                  cluster)


def _parse_bridge_peer(value: object, bridge: Bridge, field: str, tls: bool,
                       problems: list[str], where: str) -> TlsPeer | None:
    """The certificate a bridge's switch must present. Checked when the
    switch names its datapath ID, before its bridge name is known: so the
    bridge needs a datapath_id, and OpenFlow needs TLS."""
    try:
        peer = parse_tls_peer(value)
    except ValueError as e:
        problems.append(f"{where}: {field}: {e}")
        return None
    if not tls:
        problems.append(f"{where}: {field}: needs OpenFlow over TLS ([controller] "
                        f"{', '.join(_TLS_KEYS)})")
        return None
    if bridge.datapath_id is None:
        problems.append(f"{where}: {field}: needs the bridge's datapath_id (a switch names its "
                        "datapath ID before its bridge name, and the certificate is checked then)")
        return None
    return peer


def _overlap(a: str, b: str) -> bool:
    """Two listen addresses that one port cannot serve twice: the same, or
    either the wildcard of its family ("::" takes IPv4 too, dual stack)."""
    if a == b:
        return True
    x, y = ipaddress.ip_address(a), ipaddress.ip_address(b)
    return any(z.is_unspecified and (z.version == 6 or z.version == w.version) for z, w in ((x, y), (y, x)))


def _needs_a_bridge(data: dict) -> bool:
    """Whether this config must name a bridge. Today every config must: a
    controller with no bridge would only listen, on every interface, with
    the default store, which is never what an empty or truncated file
    meant. A config whose [lisp] section listens is a Map-Server and
    Map-Resolver, which needs no bridge (docs/control-plane.rst)."""
    lisp = data.get("lisp")
    return not (isinstance(lisp, dict) and "listen" in lisp)


def _table(data: dict, key: str, problems: list[str], where: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        problems.append(f"{where}: {key}: must be a table ([{key}])")
        return {}
    return value


def _parse_seconds(value: object, field: str, low: float = 0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= 600:
        raise ModelError(field, f"must be seconds between {low:g} and 600, got {value!r}")
    return float(value)


def parse_interval(value: object, field: str) -> float:
    """0 (off), or seconds from 1 to a day: a check every few
    milliseconds would keep a bridge with many flows busy for nothing."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not (value == 0 or 1 <= value <= MAX_RECONCILE_INTERVAL):
        raise ModelError(field, f"must be 0 (off) or seconds from 1 to {MAX_RECONCILE_INTERVAL:.0f}, "
                         f"got {value!r}")
    return float(value)


def _parse_token(value: object, field: str) -> str:
    if not isinstance(value, str) or len(value) < 16:
        raise ModelError(field, "must be a string of at least 16 characters")
    return value


_API_PARSERS = {
    "listen": ("host", lambda v, f: str(parse_address(v, f))),
    "port": ("port", lambda v, f: parse_int(v, f, 1, 65535)),
    "max_body_bytes": ("max_body_bytes", lambda v, f: parse_int(v, f, 1024, 2**40)),
    "confirm_timeout": ("confirm_timeout", _parse_seconds),
    "token": ("token", _parse_token),
    "client_timeout": ("client_timeout", lambda v, f: _parse_seconds(v, f, low=1)),
    "health_grace": ("health_grace", _parse_seconds),
}


def _file(value: object, field: str, base: Path, problems: list[str], where: str) -> str | None:
    """A file that must exist; relative paths are taken from the config's directory."""
    if not isinstance(value, str) or not value:
        problems.append(f"{where}: {field}: must be a file path, got {value!r}")
        return None
    path = base / value
    if not path.is_file():
        problems.append(f"{where}: {field}: {path}: no such file")
        return None
    return str(path)


def _parse_api(raw: dict, problems: list[str], where: str, base: Path = Path(".")) -> ApiSettings:
    values = {}
    files = {k: _file(raw[k], f"api.{k}", base, problems, where) for k in ("tls_cert", "tls_key") if k in raw}
    if len(files) == 1:
        problems.append(f"{where}: api: HTTPS needs both tls_cert and tls_key")
    elif files and all(files.values()):
        values.update(files)
    for key in sorted(raw):
        if key in ("tls_cert", "tls_key"):
            continue
        if key not in _API_PARSERS:
            problems.append(f"{where}: api.{key}: unknown key")
            continue
        attr, parse = _API_PARSERS[key]
        try:
            values[attr] = parse(raw[key], f"api.{key}")
        except ModelError as e:
            problems.append(f"{where}: {e}")
    return ApiSettings(**values)


def _parse_store(raw: dict, problems: list[str], where: str, base: Path) -> tuple[str, EtcdSettings | None]:
    """`[store]`: SQLite at `path` (the default), or an etcd cluster."""
    for key in sorted(set(raw) - _STORE_KEYS):
        problems.append(f"{where}: store.{key}: unknown key")
    backend = raw.get("backend", "sqlite")
    if backend not in ("sqlite", "etcd"):
        problems.append(f"{where}: store.backend: must be sqlite or etcd, got {backend!r}")
        return DEFAULT_STORE, None
    if backend == "sqlite":
        for key in sorted(_ETCD_KEYS & set(raw)):
            problems.append(f"{where}: store.{key}: only for backend = \"etcd\"")
        path = raw.get("path", DEFAULT_STORE)
        if not isinstance(path, str) or not path:
            problems.append(f"{where}: store.path: must be a file path, got {path!r}")
        return path, None
    if "path" in raw:
        problems.append(f"{where}: store.path: only for backend = \"sqlite\" (etcd keeps no local file)")
    endpoints = raw.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        problems.append(f"{where}: store.endpoints: must be a non-empty list of URLs like "
                        f"\"http://127.0.0.1:2379\", got {endpoints!r}")
        endpoints = []
    schemes = set()
    for i, url in enumerate(endpoints):
        problem = url_problem(url, bare=True)
        if problem:
            problems.append(f"{where}: store.endpoints[{i}]: {problem}")
        else:
            schemes.add(url.split(":", 1)[0])
    if len(schemes) > 1:
        problems.append(f"{where}: store.endpoints: all http:// or all https://, not both")
    values: dict = {"endpoints": tuple(endpoints)}
    prefix = raw.get("prefix", EtcdSettings.prefix)
    if not isinstance(prefix, str) or not prefix.startswith("/") or not prefix.endswith("/") or \
            not prefix.isprintable():
        problems.append(f"{where}: store.prefix: must be a key prefix that starts and ends with \"/\", "
                        f"got {prefix!r}")
    values["prefix"] = prefix
    if "timeout" in raw:
        try:
            values["timeout"] = _parse_seconds(raw["timeout"], "store.timeout", low=0.1)
        except ModelError as e:
            problems.append(f"{where}: {e}")
    files = {k: _file(raw[k], f"store.{k}", base, problems, where) for k in ("ca", "cert", "key") if k in raw}
    values.update(files)
    if ("cert" in files) != ("key" in files):
        problems.append(f"{where}: store: a client certificate needs both cert and key")
    if files and schemes == {"http"}:
        problems.append(f"{where}: store: ca, cert and key are for https:// endpoints")
    for key in ("user", "password"):
        if key in raw:
            if not isinstance(raw[key], str) or not raw[key]:
                problems.append(f"{where}: store.{key}: must be a non-empty string")
            values[key] = raw[key]
    if "password" in raw and "user" not in raw:
        problems.append(f"{where}: store.password: needs store.user")
    return DEFAULT_STORE, EtcdSettings(**values)


def _parse_cluster(raw: dict, shared: bool, api: ApiSettings, problems: list[str],
                   where: str) -> ClusterSettings | None:
    """`[cluster]`: only with an etcd store (alone, a controller masters
    every bridge it has, as ever). The instance defaults to host name and
    API port, unique on one machine because the API port is."""
    for key in sorted(set(raw) - _CLUSTER_KEYS):
        problems.append(f"{where}: cluster.{key}: unknown key")
    if not shared:
        if raw:
            problems.append(f"{where}: cluster: only with [store] backend = \"etcd\" (instances share "
                            "bridges through etcd)")
        return None
    instance = raw.get("instance", f"{socket.gethostname()}:{api.port}")
    if not isinstance(instance, str) or not _INSTANCE_CHARS.fullmatch(instance):
        problems.append(f"{where}: cluster.instance: must be 1 to 64 letters, digits and . _ : @ -, "
                        f"got {instance!r}")
    lease_ttl = raw.get("lease_ttl", ClusterSettings.lease_ttl)
    try:
        lease_ttl = parse_int(lease_ttl, "cluster.lease_ttl", 1, MAX_LEASE_TTL)
    except ModelError as e:
        problems.append(f"{where}: {e} (seconds)")
        lease_ttl = ClusterSettings.lease_ttl
    return ClusterSettings(instance, lease_ttl)


def url_problem(url: object, bare: bool = False) -> str | None:
    """What is wrong with an http(s) URL a user gave, or None: it needs a
    scheme and a host, and has no query, fragment or credentials (say so
    here, in one line, rather than fail later in a library). `bare`: also
    a port and no path, as for an etcd member. The CLI's --url is checked
    here too."""
    from urllib.parse import urlsplit

    if not isinstance(url, str):
        return f"must be a URL string, got {url!r}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        return f"{url!r}: {e}"
    if parts.scheme not in ("http", "https") or not parts.hostname or (bare and port is None):
        form = "http://HOST:PORT or https://HOST:PORT" if bare else "http[s]://HOST[:PORT][/PATH]"
        return f"must be {form}, got {url!r}"
    if (bare and parts.path not in ("", "/")) or parts.query or parts.fragment or url.endswith(("?", "#")) \
            or parts.username is not None:
        return f"must be just a scheme, host and port{'' if bare else ' (and a path)'}, got {url!r}"
    if any(c.isspace() or not c.isprintable() for c in url):
        return f"must not contain whitespace or control characters, got {url!r}"
    return None


def _check_bridges_unique(bridges: list[Bridge], problems: list[str], where: str) -> None:
    """Bridges are told apart by datapath ID or unique name, and the
    controller is the mapping system for their EIDs: any ambiguity here
    would send traffic to the wrong hypervisor."""
    by_dpid: dict[int, str] = {}
    by_name: dict[str, str] = {}
    by_rloc: dict[object, str] = {}
    by_eid: dict[tuple, str] = {}
    for b in bridges:
        if b.datapath_id is not None:
            if b.datapath_id in by_dpid:
                problems.append(f"{where}: bridge {b.label}: datapath_id {b.datapath_id:016x} "
                                f"is also used by bridge {by_dpid[b.datapath_id]}")
            by_dpid[b.datapath_id] = b.label
        if b.name is not None:
            if b.name in by_name:
                problems.append(f"{where}: bridge {b.label}: name {b.name!r} is used by two "
                                "bridges; identify them by datapath_id instead")
            by_name[b.name] = b.label
        if b.rloc in by_rloc:
            problems.append(f"{where}: bridge {b.label}: rloc {b.rloc} is also the RLOC of "
                            f"bridge {by_rloc[b.rloc]}")
        by_rloc[b.rloc] = b.label
        for ep in b.endpoints:
            for addr in ep.eids:
                key = (ep.iid, addr)
                if key in by_eid:
                    problems.append(f"{where}: bridge {b.label}: endpoint {ep.port}: EID {addr} "
                                    f"in IID {ep.iid} is also on {by_eid[key]}")
                by_eid[key] = f"bridge {b.label} port {ep.port}"
    # The gateway answer outranks every EID in the ARP table: a gateway that
    # is also a VM's address would steal that VM's traffic.
    for b in bridges:
        for ep in b.endpoints:
            if ep.gateway is not None and (ep.iid, ep.gateway) in by_eid:
                problems.append(f"{where}: bridge {b.label}: endpoint {ep.port}: gateway "
                                f"{ep.gateway} in IID {ep.iid} is the EID of "
                                f"{by_eid[(ep.iid, ep.gateway)]}")


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; ConfigError on any problem."""
    source = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError([f"{source}: cannot read: {e.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{source}: not UTF-8 text"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{source}: TOML syntax: {e}"]) from None
    return parse_config(data, source)
