"""Writes sent with an Idempotency-Key (README.rst, "Idempotent writes"):
a change and the record of its request in one transaction of the store,
its complete answer recorded once the bridges confirmed, and a request
sent again answered from that record instead of being applied twice.

`Idempotency` is a part of api/rest.py's `Api`: it uses the controller
(`ctl`), the API's settings and its reading of a body (`_raw_body`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from typing import Callable

from webob import Request, Response

from lisp_controller.api.answers import KeyInProgress, KeyReused, json_response
from lisp_controller.controller.offhub import BIG_BYTES, off_hub
from lisp_controller.controller.state import Change
from lisp_controller.errors import NotFound
from lisp_controller.model import ModelError
from lisp_controller.store import Request as Recorded, StoreError

LOG = logging.getLogger("lisp_controller.api.rest")
KEY_HEADER = "Idempotency-Key"
_KEY = re.compile(r"^[A-Za-z0-9._:~+=-]{1,200}$")  # a UUID, a ULID, a name of the client's


class Idempotency:
    """Changes, once: every handler that changes something answers through
    `_apply_change`, and `_dispatch` hands a request with a key to `_once`."""

    def _apply_change(self, req: Request, change: Change, body: dict, status: int = 200,
                      headers: dict | None = None, timings: dict | None = None) -> Response:
        """Commit `change` and answer `body` with the bridges' results. A
        request with an Idempotency-Key is recorded with the change, in its
        transaction, and its complete answer once the bridges confirmed."""
        key = req.environ.get("lisp.key")
        if key is not None:
            change.request = Recorded(key, req.method, req.path_qs, req.environ["lisp.fingerprint"], status,
                                      json.dumps(headers or {}), json.dumps(body), time.time())
        instances: list[dict] = []
        body["bridges"] = self.ctl.apply_change(change, timings=timings, instances=instances)
        if self.ctl.store is not None and self.ctl.store.seq is not None:  # a store shared with others
            body["instances"] = instances
        if key is not None:
            try:
                self.ctl.store.record_answer(key, json.dumps(body))
            except StoreError as e:  # the change is committed; a replay reports the bridges anew
                LOG.error("request %s: its answer is not recorded: %s", key, e)
        return json_response(body, status, headers)

    def _once(self, req: Request, key: str, handle: Callable[[], Response]) -> Response:
        """Answer a write sent with an Idempotency-Key: the first time by
        `handle`, afterwards from the record of what it did."""
        if not _KEY.match(key):
            raise ModelError(KEY_HEADER, "must be 1 to 200 letters, digits or ._:~+=- (a UUID will do)")
        body = self._raw_body(req)
        digest = hashlib.sha256(b"%s %s\n" % (req.method.encode(), req.path_qs.encode()))
        # hashlib lets the interpreter lock go: a 70 MB body hashes on a
        # native thread without holding the hub (70 ms for 66 MB here,
        # with the copy a concatenation made).
        off_hub(len(body) >= BIG_BYTES, digest.update, body)
        fingerprint = digest.hexdigest()
        if key in self.in_flight:
            raise KeyInProgress(KEY_HEADER, f"the request with key {key} is still being answered; "
                                f"GET /v1/requests/{key} says when it is done")
        recorded = self._recorded(key)
        if recorded is not None:
            if recorded.fingerprint != fingerprint:
                raise KeyReused(KEY_HEADER, f"key {key} was used for another request ({recorded.method} "
                                f"{recorded.path}, or another body); a new request needs a new key")
            LOG.info("request %s: %s %s sent again; answered from its record", key, req.method, req.path)
            return self._replay(recorded)
        req.environ["lisp.key"], req.environ["lisp.fingerprint"] = key, fingerprint
        self.in_flight.add(key)
        try:
            return handle()
        finally:
            self.in_flight.discard(key)

    def _recorded(self, key: str) -> Recorded | None:
        return self.ctl.store.request(key) if self.ctl.store is not None else None

    def _replay(self, recorded: Recorded) -> Response:
        body = json.loads(recorded.body)
        if not recorded.answered:  # committed, but the controller stopped before it answered
            body["bridges"] = self.ctl.wait_confirmed(self.ctl.state.generation, self.settings.confirm_timeout)
        return json_response(body, recorded.status, {**json.loads(recorded.headers), "Idempotent-Replayed": "true"})

    def get_request(self, req, key):
        if key in self.in_flight:
            return json_response({"key": key, "state": "in-progress"})
        recorded = self._recorded(key)
        if recorded is None:
            raise NotFound("key", f"no request with key {key} was committed (in the last 24 hours): it "
                           "changed nothing, and sending it again is safe")
        return json_response({
            "key": key, "state": "committed", "method": recorded.method, "path": recorded.path,
            "status": recorded.status, "answered": recorded.answered,
            "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(recorded.created)),
            "response": json.loads(recorded.body)})
