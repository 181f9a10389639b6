"""A JSON object body read member by member, its lists one item at a time.

A bulk request of a million mappings is 70 MB of JSON. Decoded whole it
is a tree with two tracked objects per mapping (the mapping's object and
its list of RLOCs), which every full collection of Python's cyclic
collector walks while the tree lives: 250 to 770 ms each at 1,000,000
mappings, holding the hub (docs/performance.rst, "A free hub"). Here the
body is decoded into text a piece at a time (`PIECE` bytes), each item of
a list member is decoded by the standard decoder
(`json.JSONDecoder.raw_decode`, on the text where the item starts) and
handed at once to a parser that makes the model's value of it; the
item's objects go as soon as it is parsed, so the tree of the whole body
is never built, and the caller may let the hub go between items.

Errors are exactly those of decoding the whole body and then checking it,
in the same order: first anything wrong with the JSON (a syntax error, a
key given twice in one object, nesting too deep: the whole body is then
decoded the usual way by `whole`, which raises the decoder's own error),
then an unknown member, then, list by list in the order the caller names
them, a member that is not a list or its first bad item. So after a bad
item the reader goes on, only checking that the rest is JSON; the caller
applies nothing unless all of it is good.
"""
from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import Callable, Collection, Mapping as MappingType

from lisp_controller.controller.slices import Slices
from lisp_controller.model import ModelError, unique_keys
from lisp_controller.model.untracked import untracked_list

PIECE = 1 << 20  # bytes of the body decoded into text at a time
_SPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace
# After a list item: its comma and the space up to the next item, or the list's end.
_AFTER_ITEM = re.compile(r"[ \t\n\r]*(?:,[ \t\n\r]*|(\]))")
_DECODER = json.JSONDecoder(object_pairs_hook=unique_keys)  # as the whole body is decoded (api/rest.py, `_body`)


def decode(data: bytes) -> object:
    """A body's JSON decoded whole, or ModelError saying what is wrong
    with it: the one wording of a bad body, whichever way it is read."""
    try:
        return json.loads(data, object_pairs_hook=unique_keys)
    except RecursionError:
        raise ModelError(None, "JSON nested too deeply") from None
    except ModelError:  # a key given twice in one object: 400 naming the key
        raise
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(None, f"body is not valid JSON: {e}") from None


class NotReadable(Exception):
    """The body is not a JSON object this reader can read item by item:
    `read_object` asks `whole` what is wrong with it."""


@dataclass(frozen=True)
class ListOf:
    """How a list member is read: each item by `parse(item, field)` (a
    ModelError names what is wrong); `problem` says what is wrong when the
    member is not a list."""

    parse: Callable[[object, str], object]
    problem: str


def read_object(data: bytes, allowed: Collection[str], lists: MappingType[str, ListOf],
                whole: Callable[[], object], slices: Slices | None = None) -> dict[str, object]:
    """The members of the JSON object `data`; a member named in `lists`
    is the list of its parsed items (a list the cyclic collector does not
    walk: model/untracked.py). `slices` pauses between items.

    Raises ModelError as decoding the whole body and then checking it
    would (see the module docstring): when the JSON is at fault,
    `whole()` must raise the decoder's error; if it returns instead (a
    valid body that is not an object), the body "must be a JSON object"."""
    try:
        members, problems = _members(_Text(data), lists, slices)
    except NotReadable as e:
        if isinstance(whole(), dict):  # the reader found a fault the decoder does not: say what
            raise ModelError(None, f"body is not valid JSON: {e}") from None
        raise ModelError(None, "must be a JSON object") from None
    unknown = sorted(set(members) - set(allowed))
    if unknown:
        raise ModelError(unknown[0], "unknown field")
    for name, how in lists.items():
        if name in problems:
            raise problems[name]
        if name in members and not isinstance(members[name], list):
            raise ModelError(name, how.problem)
    return members


def _members(text: "_Text", lists: MappingType[str, ListOf], slices: Slices | None
             ) -> tuple[dict[str, object], dict[str, ModelError]]:
    """The object's members as read, and the first problem of each list."""
    members: dict[str, object] = {}
    problems: dict[str, ModelError] = {}
    if text.next() != "{":
        raise NotReadable("not an object")
    text.at += 1
    if text.next() == "}":
        text.at += 1
    else:
        while True:
            if text.next() != '"':
                raise NotReadable("a member's name expected")
            name = text.value()
            if text.next() != ":":
                raise NotReadable("':' expected")
            text.at += 1
            if name in members:
                raise NotReadable(f"member {name!r} given twice")
            how = lists.get(name)
            if how is not None and text.next() == "[":
                members[name], problem = _list(text, name, how, slices)
                if problem is not None:
                    problems[name] = problem
            else:
                text.next()
                members[name] = text.value()
            after = text.next()
            text.at += 1
            if after == "}":
                break
            if after != ",":
                raise NotReadable("',' or '}' expected")
    if text.next() != "":
        raise NotReadable("extra data after the object")
    return members, problems


def _list(text: "_Text", name: str, how: ListOf, slices: Slices | None) -> tuple[list, ModelError | None]:
    """The list at the reading position, each item parsed as it is
    decoded; after a bad item the rest is only decoded (it must be JSON)."""
    out = untracked_list()
    problem = None
    parse = how.parse
    text.at += 1  # '['
    if text.next() == "]":
        text.at += 1
        return out, None
    n = 0
    while True:
        item = text.value()
        if problem is None:
            try:
                out.append(parse(item, f"{name}[{n}]"))
            except ModelError as e:
                problem = e
                out = untracked_list()  # nothing of it is used
        del item
        n += 1
        if slices is not None and slices.due():
            slices.pause()
        if text.after_item():
            return out, problem


class _Text:
    """The body as text, decoded `PIECE` bytes at a time: `s` holds what
    is decoded and not yet read, from `at` on."""

    def __init__(self, data: bytes):
        self._data = memoryview(data)
        try:  # as json.loads does with bytes
            self._decoder = codecs.getincrementaldecoder(json.detect_encoding(data))("surrogatepass")
        except LookupError as e:  # pragma: no cover - detect_encoding names known codecs only
            raise NotReadable(str(e)) from None
        self._decoded = 0  # bytes of the body decoded so far
        self.s = ""
        self.at = 0

    def more(self, at_least: int = PIECE) -> bool:
        """Decode at least `at_least` more bytes of the body (dropping the
        text read already); False if the body ended."""
        size = len(self._data)
        if self._decoded >= size:
            return False
        end = min(size, self._decoded + max(PIECE, at_least))
        try:
            piece = self._decoder.decode(self._data[self._decoded:end], final=end == size)
        except UnicodeDecodeError as e:
            raise NotReadable(str(e)) from None
        self._decoded = end
        self.s = self.s[self.at:] + piece
        self.at = 0
        return True

    def next(self) -> str:
        """Skip whitespace: the next character, '' at the end of the body."""
        while True:
            self.at = _SPACE.match(self.s, self.at).end()
            if self.at < len(self.s):
                return self.s[self.at]
            if not self.more():
                return ""

    def value(self) -> object:
        """The JSON value at the reading position, decoded whole; the
        position moves past it. A value that reaches the end of the text
        decoded so far is decoded again with more (a number may go on)."""
        while True:
            s, at = self.s, self.at
            try:
                value, end = _DECODER.raw_decode(s, at)
            except ModelError as e:  # a key twice in one object: the decoder says where first
                raise NotReadable(e.problem) from None
            except RecursionError:
                raise NotReadable("nested too deeply") from None
            except ValueError as e:  # JSONDecodeError: bad, or cut at the end of the text so far
                if s[at:at + 1].isspace():
                    self.next()
                    continue
                if not self.more(2 * (len(s) - at)):  # doubling: a bad body costs O(n) to find out
                    raise NotReadable(str(e)) from None
                continue
            if end == len(s) and self.more():
                continue
            self.at = end
            return value

    def after_item(self) -> bool:
        """Past the comma after a list item (and the space after it):
        False; past the list's closing bracket: True."""
        while True:
            found = _AFTER_ITEM.match(self.s, self.at)
            if found is not None:
                self.at = found.end()
                return found.group(1) is not None
            if _SPACE.match(self.s, self.at).end() < len(self.s) or not self.more():
                raise NotReadable("',' or ']' expected")
