"""What a controller takes of a change that comes from the store: the
config wins (README.rst, "Who owns what").

At start-up the store may hold entries the config has since taken over;
with a shared store (docs/etcd.rst) another controller's config may differ
from this one's. Either way the entry is left out here, with a reason.
"""
from __future__ import annotations

from lisp_controller.controller.state import Change, State, key_text
from lisp_controller.errors import Conflict, NotFound
from lisp_controller.model import Endpoint, Mapping
from lisp_controller.store import Delta


def admit(state: State, delta: Delta) -> tuple[Change, list[Mapping], list[tuple[str, Endpoint, str]]]:
    """(the change to apply, mappings left out, endpoints left out with why).
    Deletes of what this controller does not hold as API entries are no-ops
    and are dropped silently."""
    put, dropped = [], []
    for m in delta.put:
        (dropped if state.owner(m.key) in ("config", "endpoint") else put).append(m)
    delete = [key for key in delta.delete if state.owner(key) == "api"]
    delete_endpoints = [key for key in delta.delete_endpoints if tuple(key) in state.api_endpoints]
    put_endpoints, dropped_endpoints = [], []
    for label, ep in delta.put_endpoints:
        held = state.api_endpoints.get((label, ep.port))
        if held == ep and (label, ep.port) not in delete_endpoints:
            continue  # a full reload hands over what is already here
        if held is not None:  # replaced while this controller was not looking
            if (label, ep.port) not in delete_endpoints:
                delete_endpoints.append((label, ep.port))
        else:
            try:
                state.check(Change(put_endpoints=[(label, ep)]))
            except (Conflict, NotFound) as e:  # owned by the config, or its bridge is not configured here
                dropped_endpoints.append((label, ep, str(e)))
                continue
        put_endpoints.append((label, ep))
    return (Change(put=put, delete=delete, replace_api=delta.replace_all, put_endpoints=put_endpoints,
                   delete_endpoints=delete_endpoints), dropped, dropped_endpoints)


def describe_dropped(dropped: list[Mapping], dropped_endpoints: list[tuple[str, Endpoint, str]],
                     state: State) -> list[str]:
    """One log line per entry left out."""
    return ([f"mapping {key_text(m.key)} is owned by the {state.owner(m.key)} here" for m in dropped]
            + [f"endpoint {ep.port} on bridge {label} conflicts with the config ({why})"
               for label, ep, why in dropped_endpoints])
