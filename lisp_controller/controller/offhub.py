"""Big CPU-bound steps run on a native thread, so the hub keeps serving.

The controller runs every OpenFlow session, the REST API and its timers on
one eventlet hub (docs/architecture.rst). A step that holds the hub for
seconds (decoding a 100 MB JSON body, checking a million-mapping change,
one SQLite transaction writing it) makes echo replies and every API
request wait. Such steps run in eventlet's thread pool instead: the
interpreter hands the GIL back every few milliseconds, so the hub answers
in between (bench/hub.py measures it). Only steps that touch nothing the
hub changes meanwhile go there: pure functions, the state under the change
lock (read only), the store's own connection.
"""
from __future__ import annotations

from typing import Callable, TypeVar

from eventlet import tpool

T = TypeVar("T")
BIG_ITEMS = 5000  # mappings in a change worth a thread hop (about 0.1 ms)
BIG_BYTES = 256 * 1024  # bytes of a request body worth one


def start() -> None:
    """Start the thread pool now, before serving: its first use starts
    its threads and waits for each, about 50 ms of the hub in the middle
    of the first big request (bench/hub.py --watch saw it)."""
    tpool.setup()


def off_hub(big: bool, step: Callable[..., T], *args: object) -> T:
    """`step(*args)`, on a native thread when `big`; its exception is raised
    here either way."""
    return tpool.execute(step, *args) if big else step(*args)
