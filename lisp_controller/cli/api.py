"""The one HTTP client of the REST API: the CLI, the tests and the
benchmarks all talk to the controller through `ApiClient`.

Standard library only (http.client), so the CLI runs anywhere Python
does. It sends JSON (or the raw bytes given), the token as a bearer, an
Idempotency-Key when asked, and answers (status, body): the body decoded
from JSON when the answer says it is JSON, else text. What a status means
is the caller's business (the CLI turns errors into one line and an exit
status); a failure to talk at all (refused, reset, timed out, not HTTP)
is raised as OSError or http.client.HTTPException.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import ssl
import urllib.parse
from typing import Callable, ContextManager

DEFAULT_URL = "http://127.0.0.1:8080"


class ApiClient:
    """Requests to one controller's API at `url` (scheme://host[:port][/path]).
    `around` wraps each exchange (the tests enter the controller's network
    namespace with it); `context` is the TLS context for https."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 120.0,
                 around: Callable[[], ContextManager] = contextlib.nullcontext,
                 context: ssl.SSLContext | None = None):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an API URL like {DEFAULT_URL}: {url!r}")
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._base = parts.path.rstrip("/")
        self._around, self._context = around, context
        self.last_headers = http.client.HTTPMessage()  # of the last answer; names in any case

    def __call__(self, method: str, path: str, body: object = None, *, raw: bytes | None = None,
                 query: dict | None = None, headers: dict | None = None, token: str | None = None,
                 key: str | None = None, timeout: float | None = None) -> tuple[int, object]:
        """Send one request; (status, decoded body). `query` values that are
        None are left out; `token` overrides the client's for this request."""
        target = self._base + path
        if query:
            given = {k: v for k, v in query.items() if v is not None}
            if given:
                target += "?" + urllib.parse.urlencode(given)
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        sent = {"Content-Type": "application/json"} if data is not None else {}
        tok = token if token is not None else self.token
        if tok:
            sent["Authorization"] = f"Bearer {tok}"
        if key:
            sent["Idempotency-Key"] = key
        sent.update(headers or {})
        with self._around():
            conn = self._connection(self.timeout if timeout is None else timeout)
            try:
                conn.request(method, target, body=data, headers=sent)
                resp = conn.getresponse()
                payload = resp.read()
            finally:
                conn.close()
        self.last_headers = resp.headers
        if "json" in resp.getheader("Content-Type", ""):
            return resp.status, json.loads(payload)
        return resp.status, payload.decode(errors="replace")

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._https:
            context = self._context or ssl.create_default_context()
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=context)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)
