"""controller/flowlist.py: a bridge's flows listed in slices, as a whole
compile of the bridge renders them."""
from pathlib import Path

from lisp_controller.config import load_config
from lisp_controller.controller.flowlist import FlowList
from lisp_controller.controller.state import Change, State
from lisp_controller.model import Mapping
from lisp_controller.pipeline.compiler import compile_bridge, compile_local, groups_of
from lisp_controller.pipeline.flows import render

ROOT = Path(__file__).resolve().parent.parent
BLOG = load_config(ROOT / "configs" / "blog-two-hypervisors.toml")


def test_the_listing_is_every_flow_of_a_whole_compile_in_order_with_the_hub_let_go():
    state = State(BLOG)
    rlocs = (["192.0.2.1"], ["192.0.2.2", "192.0.2.3"])  # one RLOC, and a select group
    state.apply(Change(put=[Mapping.parse({"iid": 1000, "eid": f"10.{i // 256 % 256}.{i % 256}.0/24",
                                           "rlocs": rlocs[i % 2]}, source="api") for i in range(5000)]))
    bridge = state.bridge(BLOG.overlay.bridges[0].label)
    ports = {"vnet0": 1, "lisp0": 2}
    whole = compile_bridge(bridge, ports, state.shared).flows.values()
    pauses = []
    listed = FlowList(compile_local(bridge, ports, state.shared).flows, *state.shared.snapshot(),
                      state.shared.groups, lambda: pauses.append(1))
    made = len(pauses)
    lines = list(listed.lines())
    assert sorted(lines) == sorted(render(f) for f in whole) and listed.count == len(lines)
    by_text = {render(f): f for f in whole}
    keys = [(by_text[x].table, by_text[x].priority, x.split(",", 1)[1]) for x in lines]
    assert keys == sorted(keys)  # by table, priority, then the text after the cookie
    assert listed.groups == groups_of(whole) and len(listed.groups) == 1
    assert made >= 2 and len(pauses) >= made + 2  # while making the rows and while writing them
