"""Which of a shared store's changes this controller's bridges hold.

Several controllers on one etcd store (docs/etcd.rst): a write through one
answers only once the bridges of every other live controller hold it too.
Each controller therefore says, through the store, the number of the last
change (`Store.seq`) its bridges have confirmed. Changes and bridges speak
different units: the store numbers changes, a bridge confirms a state
generation (controller/state.py). `Applied` joins the two: each change is
noted with the generation that holds it, and once every bridge has
confirmed a generation, the changes up to it are applied. Pure.
"""
from __future__ import annotations

from collections import deque
from typing import Protocol


class Applied:
    """Changes applied to the state, in order, until the bridges confirm them."""

    def __init__(self) -> None:
        self._pending: deque[tuple[int, int]] = deque()  # (store seq, state generation), both rising

    def note(self, seq: int, generation: int) -> None:
        """Change `seq` is in the state from `generation` on."""
        if self._pending and seq <= self._pending[-1][0]:
            return  # noted already (a reload can repeat the number)
        self._pending.append((seq, generation))

    def reached(self, generation: int) -> int | None:
        """Every bridge holds `generation`: the last change that makes
        applied (None if no new one does)."""
        seq = None
        while self._pending and self._pending[0][1] <= generation:
            seq = self._pending.popleft()[0]
        return seq


class _Event(Protocol):
    def set(self) -> None: ...
    def clear(self) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...


class Confirmations:
    """What a bridge session sets when it confirms a generation: it wakes
    the commits waiting for their bridges (which clear and wait on the
    first event, several at once) and whoever else must know (the
    publisher of `Applied`), each on an event of its own."""

    def __init__(self, commits: _Event, *others: _Event) -> None:
        self._commits, self._others = commits, others

    def set(self) -> None:
        self._commits.set()
        for event in self._others:
            event.set()

    def clear(self) -> None:
        self._commits.clear()

    def wait(self, timeout: float | None = None) -> bool:
        return self._commits.wait(timeout)
