"""Big steps that run outside the interpreter go to a native thread, so
the hub keeps serving.

The controller runs every OpenFlow session, the REST API and its timers on
one eventlet hub (docs/architecture.rst). A step that holds the hub for
seconds makes echo replies and every API request wait. A step that spends
its time outside the interpreter, where the interpreter lock is let go
(one SQLite transaction writing a million rows: SQLite's own work and the
fsync), runs in eventlet's thread pool instead, and the hub answers
meanwhile. Only steps that touch nothing the hub changes meanwhile go
there: pure functions, the store's own connection.

Python work does not go there: it runs on the hub, in slices
(controller/slices.py). While a native thread runs Python, the hub thread
gives the interpreter lock away at each system call (a poll, a send, a
receive) and waits up to the switch interval (5 ms) to take it back, so
every echo pays several such waits (docs/performance.rst, "A free hub at
a million mappings": an echo's p50 went from 0.2 to 5.3 ms, alone on the
machine, while a thread ran Python). What still goes there with Python
in it: a request body decoded whole when it is big (a bulk body only when
it is not good JSON, to word the error: api/jsonstream.py), and the rows
the store's transaction takes from a generator, between SQLite's steps.

A resource that both the hub and a native thread use (the SQLite store's
one connection) is used one step at a time (`Turns`): a step on the hub
that comes while a thread's transaction is open waits for it as a
greenthread, so the hub serves meanwhile, and never runs inside that
transaction.
"""
from __future__ import annotations

from typing import Callable, TypeVar

from eventlet import semaphore, tpool

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


class Turns:
    """One step at a time on a resource, whether the step runs on the hub
    or on a native thread: a step waits for the one before it to end as a
    greenthread waits (the hub serves meanwhile), never on a native lock.
    A step given to `run` must not call `run` again (one turn, not nested)."""

    def __init__(self) -> None:
        self._turn = semaphore.Semaphore(1)

    def run(self, big: bool, step: Callable[..., T], *args: object) -> T:
        """`off_hub(big, step, *args)`, once every step before it ended."""
        with self._turn:
            return off_hub(big, step, *args)
