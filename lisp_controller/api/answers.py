"""What the REST API answers: its errors of HTTP, the one table of
statuses by kind of error, JSON answers, bodies written as they are made,
and the readers of query parameters. The layers below raise the
controller's own errors (`lisp_controller/errors.py`); what each means in
HTTP is decided here, in `ERROR_STATUS`, and nowhere else.
"""
from __future__ import annotations

import json
import time
from typing import Iterable, Iterator

from webob import Request, Response

from lisp_controller.api.guard import Forbidden, Refused, Unauthorized
from lisp_controller.errors import Conflict, NotFound
from lisp_controller.model import ModelError, parse_decimal
from lisp_controller.store import StoreError

WRITE_PARTS = 1000  # parts of a body written to the client at once


class MethodNotAllowed(Refused):
    pass


class PayloadTooLarge(Refused):
    pass


class UnsupportedMediaType(Refused):
    pass


class BadFraming(Refused):
    """The body cannot be read as HTTP frames it (a malformed chunk): the
    connection is closed after the answer, as nothing after it can be trusted."""

    def __init__(self, message: str):
        super().__init__(None, message, {"Connection": "close"})


class KeyReused(Refused):
    """An Idempotency-Key sent again with another request."""


class KeyInProgress(Conflict):
    """An Idempotency-Key whose first request is still being answered."""


# Status by kind of error, most specific first; anything else is a bug: 500.
ERROR_STATUS: list[tuple[type, int]] = [
    (BadFraming, 400),
    (ModelError, 400),
    (Unauthorized, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (MethodNotAllowed, 405),
    (Conflict, 409),
    (PayloadTooLarge, 413),
    (UnsupportedMediaType, 415),
    (KeyReused, 422),
    (StoreError, 503),
]


def status_of(error: Exception) -> int:
    return next((status for kind, status in ERROR_STATUS if isinstance(error, kind)), 500)


def json_response(body: object, status: int = 200, headers: dict | None = None) -> Response:
    resp = Response(status=status, content_type="application/json", charset="utf-8")
    resp.text = json.dumps(body, separators=(",", ":"))
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def error_response(status: int, field: str | None, message: str, headers: dict | None = None) -> Response:
    return json_response({"error": {"status": status, "field": field, "message": message}}, status, headers)


def written(head: str, parts: Iterable[str], tail: str, sep: str = "") -> Iterator[bytes]:
    """A body written as it is made: `head`, `parts` joined by `sep`,
    `tail`, in pieces of WRITE_PARTS parts."""
    yield head.encode()
    batch: list[str] = []
    first = True
    for part in parts:
        batch.append(part)
        if len(batch) == WRITE_PARTS:
            yield ((sep if not first else "") + sep.join(batch)).encode()
            first, batch = False, []
    if batch:
        yield ((sep if not first else "") + sep.join(batch)).encode()
    yield tail.encode()


def iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def has_body(req: Request) -> bool:
    return bool(req.content_length) or "HTTP_TRANSFER_ENCODING" in req.environ


def bool_param(req: Request, name: str) -> bool:
    value = req.GET.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise ModelError(name, f"must be true or false, got {req.GET[name]!r}")
    return value in ("true", "1")


def int_param(req: Request, name: str, default: int, low: int, high: int = 2**63 - 1) -> int:
    if name not in req.GET:
        return default
    return parse_decimal(req.GET[name], name, low, high)
