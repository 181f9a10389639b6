"""The ``[api]`` section of the config file: where the REST API listens, its
token, its limits and its HTTPS files."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lisp_controller.config.fields import existing_file, parse_seconds
from lisp_controller.model import ModelError, parse_address, parse_int

TOKEN_ENV = "LISP_CONTROLLER_TOKEN"


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


def _parse_token(value: object, field: str) -> str:
    if not isinstance(value, str) or len(value) < 16:
        raise ModelError(field, "must be a string of at least 16 characters")
    return value


_API_PARSERS = {
    "listen": ("host", lambda v, f: str(parse_address(v, f))),
    "port": ("port", lambda v, f: parse_int(v, f, 1, 65535)),
    "max_body_bytes": ("max_body_bytes", lambda v, f: parse_int(v, f, 1024, 2**40)),
    "confirm_timeout": ("confirm_timeout", parse_seconds),
    "token": ("token", _parse_token),
    "client_timeout": ("client_timeout", lambda v, f: parse_seconds(v, f, low=1)),
    "health_grace": ("health_grace", parse_seconds),
}


def parse_api(raw: dict, problems: list[str], where: str, base: Path = Path(".")) -> ApiSettings:
    values = {}
    files = {k: existing_file(raw[k], f"api.{k}", base, problems, where)
             for k in ("tls_cert", "tls_key") if k in raw}
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
