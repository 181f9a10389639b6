"""The etcd cluster as the store and the membership see it: requests to
etcd's v3 JSON gateway through etcd3gw, moved to another member only when
the failure proves the request was not carried out, and each failure
classified by what it means for the request (sent or not, and why).
Shared by store/etcd.py (the map-cache) and store/membership.py (this
instance's lease and the bridges' masters); docs/etcd.rst.

A `Cluster` belongs to the thread that made it: its HTTP session is not
shared between native threads (store/lease.py keeps its own).
"""
from __future__ import annotations

import base64
import contextlib
import json
import time
import warnings
from typing import Callable, Iterator
from urllib.parse import urlsplit

import requests

with warnings.catch_warnings():  # etcd3gw imports eventlet (through futurist), which
    warnings.filterwarnings("ignore", message="\nEventlet is deprecated")  # announces its end
    import etcd3gw
    from etcd3gw import exceptions as etcd_errors

from lisp_controller.config import EtcdSettings

# Seconds a request keeps trying when no member can take it: a leader
# election (etcd's default election timeout is 1 s) is waited out, a lost
# quorum is reported soon after.
PATIENCE = 1.5

class Failure(Exception):
    """A request failed. `certain`: it was not carried out."""

    certain = True


class Unsent(Failure):
    """The member could not take the request (down, no leader): another may."""


class NotCommitted(Unsent):
    """A commit whose answer was lost, now known not to have happened."""


class Uncertain(Failure):
    """The request may or may not have been carried out (timeout, lost connection)."""

    certain = False


class Refused(Failure):
    """The cluster refused the request itself (too big, no space, not allowed)."""


class Compacted(Failure):
    """The revision asked for is older than etcd keeps."""


# What reading a watch raises when its stream ends or is cut: a failure, a
# broken connection, a garbled line, or (urllib3 reading a response whose
# socket `_restart_watch` shut) an AttributeError.
CUT = (Failure, requests.RequestException, ValueError, KeyError, AttributeError)


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def range_end(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def classify(exc: etcd_errors.Etcd3Exception, timeout: float) -> Failure:
    """What an etcd3gw error means for the request: sent or not, and why."""
    cause = exc.__context__
    if isinstance(cause, requests.exceptions.ConnectTimeout):
        return Unsent("connection timed out")
    if isinstance(cause, requests.exceptions.Timeout):
        return Uncertain(f"no answer within {timeout:g} s")
    if isinstance(cause, requests.exceptions.ConnectionError):
        text = str(cause)
        if "refused" in text or "NewConnectionError" in text or "Name or service" in text:
            return Unsent("connection refused")
        return Uncertain(f"connection lost ({text[:120]})")
    try:
        message = json.loads(exc.detail_text)["message"]
    except (TypeError, ValueError, KeyError):
        message = exc.detail_text or type(exc).__name__
    if "no leader" in message or "invalid auth token" in message or "not capable" in message:
        return Unsent(message)
    if "compacted" in message:
        return Compacted(message)
    if "space exceeded" in message:
        return Refused(f"{message} (etcd's space quota is full: compact and defragment it)")
    if isinstance(exc, (etcd_errors.InternalServerError, etcd_errors.ConnectionFailedError,
                        etcd_errors.ConnectionTimeoutError)):
        return Uncertain(message)  # timed out, leader changed, stopping...
    return Refused(message)


class Cluster:
    """The members, through etcd3gw: a request goes to the member that
    answered last and moves on only when the failure proves it was not
    carried out (or when it is a read)."""

    def __init__(self, settings: EtcdSettings, password: str | None):
        self.urls = list(settings.endpoints)
        self.timeout = settings.timeout
        self.session = requests.Session()
        # A member without a leader refuses at once instead of waiting for
        # one (etcd's "require leader" metadata, through the gateway).
        self.session.headers["Grpc-Metadata-hasleader"] = "true"
        if settings.ca:
            self.session.verify = settings.ca
        if settings.cert:
            self.session.cert = (settings.cert, settings.key)
        self.clients = []
        for url in self.urls:
            parts = urlsplit(url)
            self.clients.append(etcd3gw.Etcd3Client(host=parts.hostname, port=parts.port, protocol=parts.scheme,
                                                    timeout=settings.timeout, api_path="/v3/",
                                                    session=self.session))
        self.user, self.password = settings.user, password
        self.current = 0
        # Called with (request path, seconds) after each request that got
        # an answer: the metrics' etcd latency (api/metrics.py).
        self.observe: Callable[[str, float], None] | None = None

    def authenticate(self) -> None:
        if not self.user:
            return
        self.session.headers.pop("Authorization", None)
        answer = self.call("auth/authenticate", {"name": self.user, "password": self.password or ""},
                           idempotent=True, auth=False)
        self.session.headers["Authorization"] = answer["token"]

    def call(self, path: str, body: dict, idempotent: bool, auth: bool = True) -> dict:
        """POST to /v3/`path`. Raises a Failure saying what happened."""
        deadline = time.monotonic() + PATIENCE
        while True:
            try:
                return self._call_once(path, body, idempotent, auth)
            except Unsent:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    def _call_once(self, path: str, body: dict, idempotent: bool, auth: bool) -> dict:
        reasons = []
        for k in range(len(self.clients)):
            i = (self.current + k) % len(self.clients)
            client = self.clients[i]
            started = time.monotonic()
            try:
                try:
                    answer = client.post(client.get_url(path), json=body)
                except etcd_errors.Etcd3Exception as e:
                    failure = classify(e, self.timeout)
                    if auth and self.user and "invalid auth token" in str(failure):
                        self.authenticate()  # tokens expire; one more try with a new one
                        answer = client.post(client.get_url(path), json=body)
                    else:
                        raise failure from None
            except etcd_errors.Etcd3Exception as e:
                failure = classify(e, self.timeout)
            except Failure as e:
                failure = e
            else:
                self.current = i
                if self.observe is not None:
                    self.observe(path, time.monotonic() - started)
                return answer
            reasons.append(f"{self.urls[i]}: {failure}")
            if isinstance(failure, (Refused, Compacted)) or (not failure.certain and not idempotent):
                raise type(failure)("; ".join(reasons))
        raise Unsent("; ".join(reasons))

    def watch(self, key: str, start_revision: int, on_stream: Callable,
              prefix: bool = False) -> Iterator[dict]:
        """Events on `key` (every key under it, if `prefix`) from
        `start_revision`, as long as the stream lasts."""
        create = {"key": b64(key), "start_revision": start_revision}
        if prefix:
            create["range_end"] = b64(range_end(key))
        reasons = []
        for k in range(len(self.clients)):
            i = (self.current + k) % len(self.clients)
            client = self.clients[i]
            try:
                resp = self.session.post(client.get_url("watch"), stream=True, timeout=(self.timeout, None),
                                         json={"create_request": create})
            except requests.RequestException as e:
                reasons.append(f"{self.urls[i]}: {e}")
                continue
            if resp.status_code != 200:
                reasons.append(f"{self.urls[i]}: HTTP {resp.status_code} {resp.text[:200]}")
                resp.close()
                continue
            self.current = i
            on_stream(resp, self.urls[i])
            break
        else:
            raise Unsent("; ".join(reasons))
        with contextlib.closing(resp):
            for line in resp.iter_lines(chunk_size=None):
                if not line.strip():
                    continue
                message = json.loads(line)
                if "error" in message:
                    raise Unsent(f"{self.urls[i]}: watch ended: {message['error'].get('message')}")
                result = message.get("result", {})
                if result.get("canceled"):
                    if int(result.get("compact_revision", 0)):
                        raise Compacted(f"revision {start_revision} was compacted")
                    raise Unsent(f"{self.urls[i]}: watch cancelled: {result.get('cancel_reason', '')}")
                yield from result.get("events", ())

    def close(self) -> None:
        self.session.close()
