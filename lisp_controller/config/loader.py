"""Reading the TOML config file, and validating it once into typed values.

Every problem is collected, not just the first, so an operator fixes a bad
file in one pass; each is one line: file, key, what is wrong. Each section
is parsed by its own module of this package (``[lisp]`` and ``[[site]]``
by ``lisp/config.py``); the checks across sections are here.
"""
from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from lisp_controller.config.api import ApiSettings, parse_api
from lisp_controller.config.bridges import parse_bridges, parse_mappings
from lisp_controller.config.controller import (DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_HANDSHAKES,
                                               DEFAULT_RECONCILE_INTERVAL, OpenFlowTls, parse_controller,
                                               parse_openflow_tls)
from lisp_controller.config.fields import table
from lisp_controller.config.store import DEFAULT_STORE, ClusterSettings, EtcdSettings, parse_cluster, parse_store
from lisp_controller.errors import LispControllerError
from lisp_controller.lisp.config import LispSettings, XtrSettings, parse_lisp, parse_xtr
from lisp_controller.model import Overlay
from lisp_controller.openflow.tls import TlsPeer


class ConfigError(LispControllerError):
    """The config file has problems: every one of them, one line each."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


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


_TOP_KEYS = {"controller", "api", "store", "bridge", "mapping", "lisp", "site", "cluster"}


def parse_config(data: dict, source: str = "<config>") -> Config:
    """Validate a parsed TOML document; raise ConfigError listing every problem."""
    problems: list[str] = []
    where = source
    for key in sorted(set(data) - _TOP_KEYS):
        problems.append(f"{where}: {key}: unknown key")

    ctl = data.get("controller", {})
    if not isinstance(ctl, dict):
        problems.append(f"{where}: controller: must be a table")
        ctl = {}
    controller = parse_controller(ctl, problems, where)
    host, port, miss_action = controller.host, controller.port, controller.miss_action

    lisp_raw = data.get("lisp", {})  # parse_lisp reports a [lisp] that is not a table
    xtr = parse_xtr(lisp_raw if isinstance(lisp_raw, dict) else {}, host, problems, where)
    if "miss_action" not in ctl and xtr.resolves:
        miss_action = "send-map-request"  # a miss is asked of the map-resolvers unless told otherwise

    base = Path(source).parent if source != "<config>" else Path(".")
    tls, tls_given = parse_openflow_tls(ctl, base, problems, where)
    api = parse_api(table(data, "api", problems, where), problems, where, base)
    if api.port == port and _overlap(api.host, host):
        problems.append(f"{where}: api.port: {port} is also the OpenFlow port ([controller] port) on "
                        f"{host if host == api.host else f'{host} and {api.host}'}; they need different ports")
    store_path, etcd = parse_store(table(data, "store", problems, where), problems, where, base)
    cluster = parse_cluster(table(data, "cluster", problems, where), etcd is not None, api, problems, where)

    bridges, tls_peers = parse_bridges(data, tls_given, problems, where)
    mappings = parse_mappings(data, problems, where)

    lisp = parse_lisp(data, problems, where)
    if xtr.active and lisp.enabled and str(xtr.control_address) == lisp.listen:
        problems.append(f"{where}: lisp.control_address: {lisp.listen} is also lisp.listen; the xTR role "
                        "needs an address of its own (one socket per address and port 4342)")

    if problems:
        raise ConfigError(problems)
    return Config(source, host, port, Overlay(tuple(bridges), tuple(mappings), miss_action),
                  api, store_path, controller.reconcile_interval, tls, etcd, lisp, controller.handshake_timeout,
                  controller.max_handshakes, tls_peers, xtr, cluster)


def _overlap(a: str, b: str) -> bool:
    """Two listen addresses that one port cannot serve twice: the same, or
    either the wildcard of its family ("::" takes IPv4 too, dual stack)."""
    if a == b:
        return True
    x, y = ipaddress.ip_address(a), ipaddress.ip_address(b)
    return any(z.is_unspecified and (z.version == 6 or z.version == w.version) for z, w in ((x, y), (y, x)))


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
