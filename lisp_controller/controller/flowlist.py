"""Every flow a bridge should hold, as text, in order, without holding the hub.

`GET /v1/datapaths/{bridge}/flows` shows the bridge's own flows and the
map-cache's flows (a million at a million mappings). Making each flow from
its mapping and rendering it costs about 20 us, and sorting a million
flows in one step takes seconds; done at once it held the hub (every
OpenFlow echo and API request) for half a minute (docs/performance.rst,
"A free hub at a million mappings"). So:

- the map-cache's flows are taken as two lists made in C (their cookies,
  and what each is made from: milliseconds for a million), so the state
  may change while the listing goes on: it shows the flows as they were
  when it started;
- each flow is made and rendered in slices (controller/slices.py), with
  the hub let go in between, and kept as its sort key and its text (ints
  and a string: nothing the collector walks for long);
- runs of `RUN` rows are sorted as they fill (well under a millisecond
  each) and merged lazily while the answer is written, a slice at a time.

The order: by table, then priority, then the flow's text after its cookie.
Pure apart from `pause`.
"""
from __future__ import annotations

import heapq
from typing import Callable, Iterable, Iterator, Mapping as TMapping

from lisp_controller.controller.slices import Slices, sliced
from lisp_controller.model import Mapping
from lisp_controller.pipeline.compiler import groups_of, mapping_flow
from lisp_controller.pipeline.flows import Flow, Group, render

RUN = 1000  # rows sorted together before the merge


class FlowList:
    """One bridge's flows as they were when it was made: `lines()` gives
    them rendered, in order, letting the hub go between slices."""

    def __init__(self, own: TMapping[int, Flow], shared_cookies: list[int], shared_sources: list,
                 shared_groups: TMapping[int, Group], pause: Callable[[], None]):
        """`own`: the bridge's own flows by cookie; `shared_cookies` and
        `shared_sources`: the map-cache's flows, cookie by cookie, each a
        `Mapping` (its flow made here) or a `Flow`; `shared_groups`: the
        groups those use."""
        self._pause = pause
        self.groups: dict[int, Group] = {**shared_groups, **groups_of(own.values())}
        seen: set[int] = set()  # an own flow the map-cache also has is listed once
        runs: list[list[tuple]] = []
        run: list[tuple] = []
        for cookie, source in sliced(_chain(own.items(), zip(shared_cookies, shared_sources), seen),
                                     Slices(pause)):
            flow = mapping_flow(source) if isinstance(source, Mapping) else source
            run.append((flow.table, flow.priority, flow_text(flow), cookie))
            if len(run) == RUN:
                run.sort()
                runs.append(run)
                run = []
        run.sort()
        runs.append(run)
        self._runs = runs
        self.count = sum(map(len, runs))

    def lines(self) -> Iterator[str]:
        """Each flow as `ovs-ofctl add-flow` takes it, cookie first, in
        order. Each row is let go as it is written: freeing a million at
        the end took 90 ms in one step."""
        runs, self._runs = self._runs, []
        merged = heapq.merge(*map(_drained, runs))
        del runs
        for table, priority, text, cookie in sliced(merged, Slices(self._pause)):
            yield f"cookie={cookie:#x},{text}"


def _drained(run: list) -> Iterator:
    """The items of `run` in order, each gone from it once taken."""
    run.reverse()
    pop = run.pop
    while run:
        yield pop()


def _chain(own: Iterable[tuple[int, Flow]], shared: Iterable[tuple[int, object]],
           seen: set[int]) -> Iterator[tuple[int, object]]:
    """The own flows, then the map-cache's flows not among them."""
    for cookie, flow in own:
        seen.add(cookie)
        yield cookie, flow
    for cookie, source in shared:
        if cookie not in seen:
            yield cookie, source


def flow_text(flow: Flow) -> str:
    """The flow's text after its cookie (pipeline/flows.py `render`)."""
    return render(flow, cookie=False)
