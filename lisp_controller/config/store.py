"""The ``[store]`` and ``[cluster]`` sections of the config file: SQLite, or
an etcd cluster several controllers share and this instance among them
(docs/etcd.rst); and the check of a URL a user gave, which the CLI's
``--url`` uses too."""
from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path

from lisp_controller.config.api import ApiSettings
from lisp_controller.config.fields import existing_file, parse_seconds
from lisp_controller.model import ModelError, parse_int

ETCD_PASSWORD_ENV = "LISP_CONTROLLER_ETCD_PASSWORD"
DEFAULT_STORE = "/var/lib/lisp-controller/store.db"
_STORE_KEYS = {"backend", "path", "endpoints", "prefix", "timeout", "ca", "cert", "key", "user", "password"}
_ETCD_KEYS = _STORE_KEYS - {"backend", "path"}
_CLUSTER_KEYS = {"instance", "lease_ttl"}
_INSTANCE_CHARS = re.compile(r"[A-Za-z0-9._:@-]{1,64}")
MAX_LEASE_TTL = 60


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


def parse_store(raw: dict, problems: list[str], where: str, base: Path) -> tuple[str, EtcdSettings | None]:
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
            values["timeout"] = parse_seconds(raw["timeout"], "store.timeout", low=0.1)
        except ModelError as e:
            problems.append(f"{where}: {e}")
    files = {k: existing_file(raw[k], f"store.{k}", base, problems, where) for k in ("ca", "cert", "key") if k in raw}
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


def parse_cluster(raw: dict, shared: bool, api: ApiSettings, problems: list[str],
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
