"""What the controller process holds: memory, sockets, greenthreads.

For leak checks (tests flap a bridge 50 times and compare) and for
operators (/metrics, /v1/debug/resources). Linux /proc only.
"""
from __future__ import annotations

import gc
import os
import resource


def resident_bytes() -> int:
    """Resident set size now (not the peak)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def hub_timers() -> int:
    """Timers in eventlet's hub, cancelled ones included: a cancelled timer
    (a socket timeout that did not fire) stays until its deadline. Each is
    two tracked objects (the timer and its heap entry) that are not leaks."""
    from eventlet import hubs

    hub = hubs.get_hub()
    return len(getattr(hub, "timers", ())) + len(getattr(hub, "next_timers", ()))


def objects() -> tuple[int, int]:
    """(live greenlets, objects tracked by the collector). A blocked
    greenthread is referenced only by what it waits on, so the only way to
    count them is to walk every object after a full collection: costly
    with a big state (an explicit debug call, not a metric)."""
    import greenlet

    gc.collect()
    tracked = gc.get_objects()
    count = sum(1 for o in tracked if isinstance(o, greenlet.greenlet) and not o.dead), len(tracked)
    del tracked
    return count
