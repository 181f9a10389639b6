"""The ``[controller]`` section of the config file: where OpenFlow listens,
what a bridge does on a map-cache miss, how often bridges are checked in
depth, the handshake limits (docs/reliability.rst, "OpenFlow admission")
and OpenFlow's TLS files."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lisp_controller.config.fields import existing_file, parse_seconds
from lisp_controller.model import ModelError, parse_action, parse_address, parse_int

DEFAULT_RECONCILE_INTERVAL = 60.0
MAX_RECONCILE_INTERVAL = 86400.0
DEFAULT_HANDSHAKE_TIMEOUT = 5.0
DEFAULT_MAX_HANDSHAKES = 256
TLS_KEYS = ("tls_key", "tls_cert", "tls_ca")
_CONTROLLER_KEYS = {"listen", "port", "miss_action", "reconcile_interval", "handshake_timeout",
                    "max_handshakes", *TLS_KEYS}


@dataclass(frozen=True)
class OpenFlowTls:
    """Key and certificate of the controller, and the CA that signed the
    switches' certificates: with these, OpenFlow is TLS only."""

    key: str
    cert: str
    ca: str


@dataclass(frozen=True)
class ControllerSection:
    """``[controller]`` but its TLS files (``parse_openflow_tls``), as the
    loader puts it into ``Config``."""

    host: str = "0.0.0.0"
    port: int = 6653
    miss_action: str = "drop"  # the loader makes it send-map-request for an xTR that resolves
    reconcile_interval: float = DEFAULT_RECONCILE_INTERVAL
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    max_handshakes: int = DEFAULT_MAX_HANDSHAKES


def parse_controller(ctl: dict, problems: list[str], where: str) -> ControllerSection:
    host, port, miss_action = ControllerSection.host, ControllerSection.port, ControllerSection.miss_action
    reconcile_interval = DEFAULT_RECONCILE_INTERVAL
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
            handshake_timeout = parse_seconds(ctl["handshake_timeout"], "controller.handshake_timeout", low=1)
        if "max_handshakes" in ctl:
            max_handshakes = parse_int(ctl["max_handshakes"], "controller.max_handshakes", 1, 65535)
    except ModelError as e:
        problems.append(f"{where}: {e}")
    return ControllerSection(host, port, miss_action, reconcile_interval, handshake_timeout, max_handshakes)


def parse_interval(value: object, field: str) -> float:
    """0 (off), or seconds from 1 to a day: a check every few
    milliseconds would keep a bridge with many flows busy for nothing."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not (value == 0 or 1 <= value <= MAX_RECONCILE_INTERVAL):
        raise ModelError(field, f"must be 0 (off) or seconds from 1 to {MAX_RECONCILE_INTERVAL:.0f}, "
                         f"got {value!r}")
    return float(value)


def parse_openflow_tls(ctl: dict, base: Path, problems: list[str], where: str) -> tuple[OpenFlowTls | None, bool]:
    """OpenFlow's TLS files, and whether any was given (then a bridge's
    ``tls_peer`` is not reported as needing TLS on top of the problem with
    the files)."""
    given = {k: existing_file(ctl[k], f"controller.{k}", base, problems, where) for k in TLS_KEYS if k in ctl}
    if given and len(given) < len(TLS_KEYS):
        problems.append(f"{where}: controller: TLS needs all of {', '.join(TLS_KEYS)} "
                        f"(missing {', '.join(k for k in TLS_KEYS if k not in given)})")
    elif given and all(given.values()):
        return OpenFlowTls(given["tls_key"], given["tls_cert"], given["tls_ca"]), True
    return None, bool(given)
