"""Which prefix a Map-Reply may cover without hiding another mapping.

A negative Map-Reply tells an ITR that nobody has an EID, and the ITR caches
the prefix of the reply for its TTL. RFC 9301 (section 8.4, after RFC 6833)
asks for the least-specific prefix that matches the requested EID and does
not match any EID-prefix known to the mapping system: as wide as possible, so
one negative entry stands for a whole hole, yet never covering a prefix that
has a mapping (the ITR would then miss it for the whole TTL).

The same rule narrows a positive answer: a reply for 10.0.0.0/8 must not
cover 10.1.1.20/32 that maps elsewhere, so the reply shrinks to the widest
prefix inside 10.0.0.0/8 around the EID that contains no more specific
mapping.

Both come down to one number per known prefix p and the EID a: a/L covers p
when L is at most both p's length and the number of leading bits a shares
with p's network. So L must exceed ``min(len(p), common_bits(a, p))`` for
every p (``cover_length``). Over a sorted set of prefixes only a few can set
that maximum, the neighbours of a in address order (``PrefixOrder``), so a
request costs a bisection however many mappings there are.
"""
from __future__ import annotations

from typing import Iterable

from sortedcontainers import SortedList

from lisp_controller.model import IPAddress, Prefix


def common_bits(a: int, b: int, width: int) -> int:
    """How many leading bits of two ``width``-bit numbers are equal."""
    return width - (a ^ b).bit_length()


def cover_length(address: IPAddress, known: Iterable[Prefix], at_least: int = 0) -> int | None:
    """The shortest length L (not below ``at_least``) such that address/L
    covers none of the ``known`` prefixes of the address's version; None if
    even the host prefix would (the address itself is known)."""
    width = address.max_prefixlen
    value = int(address)
    length = at_least
    for prefix in known:
        version, network, prefixlen = prefix
        if version != address.version:
            continue
        needed = min(prefixlen, common_bits(value, network, width)) + 1
        if needed > length:
            length = needed
    return length if length <= width else None


def negative_prefix(address: IPAddress, known: Iterable[Prefix]) -> Prefix | None:
    """The least-specific prefix around ``address`` that covers none of the
    ``known`` prefixes (RFC 9301 section 8.4), or None if ``address`` is
    itself one of them. Pure; O(len(known)). ``PrefixOrder.hole`` gives the
    same answer over a large sorted set."""
    length = cover_length(address, known)
    return None if length is None else _prefix_of(address, length)


def _prefix_of(address: IPAddress, length: int) -> Prefix:
    width = address.max_prefixlen
    mask = ((1 << length) - 1) << (width - length) if length else 0
    return Prefix(address.version, int(address) & mask, length)


class PrefixOrder:
    """Every prefix of a map-cache, per IID, in address order.

    ``MapCache.watch`` keeps it up to date (``add``/``discard`` with
    ``prefix_key`` tuples); ``neighbours`` finds the few prefixes that decide
    ``cover_length`` for an address, so holes are found by bisection."""

    def __init__(self) -> None:
        self._keys = SortedList()   # (iid, version, network, length)
        self.changes = 0            # bumped by every add and discard: answers cached before are stale

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: tuple[int, int, int, int], mapping: object = None) -> None:
        self._keys.add(key)
        self.changes += 1

    def replace(self, key: tuple[int, int, int, int], mapping: object) -> None:
        """A mapping put in place of another: the prefixes stay as they are
        (answers cached from the old mapping are told apart by identity,
        see ``MapResolver._positive``)."""

    def discard(self, key: tuple[int, int, int, int]) -> None:
        self._keys.discard(key)
        self.changes += 1

    def neighbours(self, iid: int, address: IPAddress) -> list[Prefix]:
        """The prefixes of ``iid`` that can decide ``cover_length`` for
        ``address``: those containing it, met while walking back to the
        nearest one before it that does not, plus that one and the first
        one after it. (Any prefix further away shares fewer leading bits
        with the address than the one in between, see the module doc.)"""
        version, value, width = address.version, int(address), address.max_prefixlen
        keys = self._keys
        index = keys.bisect_right((iid, version, value, width + 1))
        found: list[Prefix] = []
        if index < len(keys):
            k = keys[index]
            if k[0] == iid and k[1] == version:
                found.append(Prefix(version, k[2], k[3]))
        while index > 0:
            index -= 1
            k = keys[index]
            if k[0] != iid or k[1] != version:
                break
            found.append(Prefix(version, k[2], k[3]))
            if k[3] and (value ^ k[2]) >> (width - k[3]):
                break   # the nearest one that does not contain the address
        return found

    def hole(self, iid: int, address: IPAddress, extra: Iterable[Prefix] = ()) -> Prefix | None:
        """``negative_prefix`` over every prefix of ``iid`` plus ``extra``."""
        return negative_prefix(address, [*self.neighbours(iid, address), *extra])

    def narrowed(self, iid: int, address: IPAddress, prefix: Prefix) -> Prefix:
        """The widest prefix inside ``prefix`` (which holds ``address`` and is
        its longest match) around ``address`` that contains no more specific
        known prefix: what a positive Map-Reply may safely cover."""
        version, network, length = prefix
        width = address.max_prefixlen
        if length == width:
            return prefix
        keys = self._keys
        index = keys.bisect_right((iid, version, network, length))
        if index == len(keys):
            return prefix
        first = keys[index]   # the first prefix after it in order: inside it, if any is
        if first[0] != iid or first[1] != version or first[2] > network | ((1 << (width - length)) - 1):
            return prefix
        inside = [p for p in self.neighbours(iid, address) if p[2] > prefix[2]]
        length = cover_length(address, inside, at_least=prefix[2])
        return prefix if length is None or length == prefix[2] else _prefix_of(address, length)

