"""Who may ask the API what: the checks made before a request is read.

A web page in a browser can send requests to the API that the user never
meant (cross-site request forgery), and through DNS rebinding even read
its answers. The API refuses both without needing anything from the
user (README.rst, "Security"):

- a change needs ``Content-Type: application/json`` (checked where the
  body is read), which no page can send to another site without the
  browser asking first (a CORS preflight, which the API never grants);
- a change whose ``Origin`` is not the API's own, or that the browser
  marks ``Sec-Fetch-Site: cross-site`` (or ``same-site``), is refused;
- an API that listens on loopback only answers requests addressed to a
  loopback name (``Host``), so a page whose name was made to resolve to
  127.0.0.1 gets nothing;
- a token, when configured, is needed for changes and debug views, and
  is required when the API listens beyond loopback (`exposure_problem`).
"""
from __future__ import annotations

import hmac
import ipaddress
import re

from webob import Request

from lisp_controller.config import TOKEN_ENV
from lisp_controller.errors import LispControllerError

_HOST = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[^:\[\]]+))(?::\d+)?$")
_SAME = (None, "same-origin", "none")  # Sec-Fetch-Site values of a non-cross-site request


class Refused(LispControllerError):
    """A request refused before the API looked at what it asks; `headers`
    go into the answer (WWW-Authenticate, Allow)."""

    def __init__(self, field: str | None, message: str, headers: dict | None = None):
        super().__init__(message, field)
        self.headers = headers or {}


class Unauthorized(Refused):
    """No token, or the wrong one."""


class Forbidden(Refused):
    """Cross-site, or addressed to a name that is not the API's."""


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def exposure_problem(listen: str, token: str | None) -> str | None:
    """Why the API may not start as configured, or None: beyond loopback,
    anyone who can reach the port could change the bridges' flows."""
    if token or is_loopback(listen):
        return None
    return (f"the API listens on {listen}, beyond loopback, and has no token: set [api] token "
            f"(at least 16 characters) or {TOKEN_ENV}, or listen on 127.0.0.1")


class Guard:
    def __init__(self, token: str | None, listen: str):
        self.token = token.encode() if token else None
        self.loopback_only = is_loopback(listen)

    def check_host(self, req: Request) -> None:
        """On a loopback-only API, every request must name a loopback host."""
        host = req.environ.get("HTTP_HOST")
        if not self.loopback_only or host is None or _loopback_name(host):
            return
        raise Forbidden("Host", f"{host!r} is not a name of this API, which listens on loopback only "
                        "(use 127.0.0.1, [::1] or localhost)")

    def check_same_origin(self, req: Request) -> None:
        """A change must come from the API's own pages or from a client
        that is not a browser (which sends neither header)."""
        site = req.headers.get("Sec-Fetch-Site")
        if site not in _SAME:
            raise Forbidden("Sec-Fetch-Site", f"a {site} request may not change anything; "
                            "use the API's own page or a client that is not a browser")
        origin = req.headers.get("Origin")
        own = f"{req.scheme}://{req.host}".lower()
        if origin is not None and origin.lower() != own:
            raise Forbidden("Origin", f"{origin!r} is not this API's origin ({own}); "
                            "changes from other web pages are refused")

    def authorize(self, req: Request, what: str = "changes") -> None:
        if self.token is None:
            return
        scheme, _, given = req.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token):
            raise Unauthorized("Authorization", f"a valid bearer token is required for {what} "
                               f"(set {TOKEN_ENV} for the CLI)",
                               {"WWW-Authenticate": 'Bearer realm="lisp-controller"'})


def _loopback_name(host: str) -> bool:
    m = _HOST.match(host)
    if m is None:
        return False
    if m.group("v6"):
        return is_loopback(m.group("v6"))
    name = m.group("name").lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost") or is_loopback(name)
