"""What the controller asks of a store, whichever holds the data: SQLite on
this host (the default) or an etcd cluster shared by several controllers
(docs/etcd.rst).

Both give the same guarantees: a write returns only once it is durable and
is all or nothing, even for 100,000 mappings; a write that cannot be made
raises StoreError and changes nothing the controller can see. A shared store
also tells each controller what the others committed (`follow`).

A write sent to the API with an Idempotency-Key is recorded in the same
transaction as its change (`Request`), so after a crash the record exists
exactly when the change does, and a retry is answered from it instead of
being applied twice (README.rst, "Idempotent writes").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterable, NamedTuple, Protocol

from lisp_controller.errors import LispControllerError
from lisp_controller.model import Endpoint, Mapping

REQUEST_KEEP = 86400.0  # seconds an Idempotency-Key is remembered


class StoreError(LispControllerError):
    """The store cannot be opened, read or written; the message says why."""


class StoreStale(StoreError):
    """Another controller committed a change this one has not applied yet,
    so this write was checked against an old state: nothing was written.
    `catch_up`, check the change again, and write again."""


@dataclass
class Delta:
    """One committed change, as the store hands it to a controller: the
    arguments of `Store.write`, in its order (replace_all, delete, put;
    endpoints deleted, then put)."""

    put: list[Mapping] = field(default_factory=list)
    delete: list[tuple] = field(default_factory=list)  # (iid, prefix)
    replace_all: bool = False  # API mappings not in `put` are deleted
    put_endpoints: list[tuple[str, Endpoint]] = field(default_factory=list)  # (bridge label, ep)
    delete_endpoints: list[tuple[str, str]] = field(default_factory=list)  # (bridge label, port)
    seq: int | None = None  # its number in a shared store's order of changes (`Store.seq`)


Listener = Callable[[Delta], None]


class Request(NamedTuple):
    """A write sent with an Idempotency-Key, and what it was answered.
    `body` is JSON text; until the bridges have confirmed (`answered`
    false) it lacks their part."""

    key: str
    method: str
    path: str
    fingerprint: str  # of the method, path and body: a retry must match it
    status: int
    headers: str  # JSON object
    body: str
    created: float  # time.time()
    answered: bool = False


class Store(Protocol):
    """The interface `__main__`, the controller and the API use."""

    name: str  # what logs call it: the file, or the etcd endpoints and prefix
    # Why changes cannot be stored now, when the store was opened
    # read-only; None when it is writable.
    read_only: str | None
    # A shared store numbers the changes of all controllers in one order:
    # how many this controller holds (after a write: that write's number).
    # None: a store of one controller.
    seq: int | None

    def load(self) -> tuple[list[Mapping], list[tuple[str, Endpoint]]]:
        """Every stored API mapping and API endpoint."""

    def write(self, put: Iterable[Mapping] = (), delete: Iterable[tuple] = (), replace_all: bool = False,
              put_endpoints: Iterable[tuple[str, Endpoint]] = (),
              delete_endpoints: Iterable[tuple[str, str]] = (), request: Request | None = None,
              big: bool = False) -> None:
        """One change, all or nothing, durable when this returns, and
        `request` recorded with it. `big`: a change worth a native thread
        (controller/offhub.py), where a store whose write would hold its
        thread (SQLite) makes it; one that yields to the hub meanwhile
        (etcd's HTTP client) makes it where it is. Raises StoreError (StoreStale: see
        there) having changed nothing. With `follow`, call it holding the
        lock given there."""

    def request(self, key: str) -> Request | None:
        """The request recorded with this key in the last REQUEST_KEEP
        seconds, or None."""

    def record_answer(self, key: str, body: str) -> None:
        """The complete answer of a recorded request, once it is known."""

    def follow(self, on_change: Listener, lock: ContextManager) -> None:
        """From now on, call `on_change` (holding `lock`) with every change
        other controllers commit, in commit order, once each."""

    def catch_up(self, timeout: float) -> bool:
        """Wait until every change known to be committed has been handed to
        `on_change`; False if that took longer than `timeout` seconds."""

    def applied(self, seq: int) -> None:
        """This controller's bridges hold every change up to `seq`: tell
        the other controllers (a shared store; otherwise nothing). Returns
        at once; the store says it when it can."""

    def wait_applied(self, seq: int, timeout: float) -> list[dict]:
        """Wait (at most `timeout` seconds) until every other live
        controller has said its bridges hold change `seq`. One entry per
        controller: ``{"instance", "status": confirmed | timeout | gone,
        "applied"}`` (gone: it stopped meanwhile). A store of one
        controller: [] at once."""

    def close(self) -> None:
        ...
