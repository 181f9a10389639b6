"""Where the controller's hub is held: a stall detector with stack samples.

Every OpenFlow session, API request and timer shares one eventlet hub
(docs/performance.rst, "A free hub"). The hub polls for I/O, then runs
every greenthread that is ready, then polls again: an echo request that
arrives meanwhile waits for the whole round. So a stall is one round
between two polls longer than `threshold`. The hub's poll is wrapped to
time the rounds; a native thread looks every few milliseconds and, once a
round has run longer than `sample_after`, samples the hub thread's stack.
Each stall is written as one JSON line: when, how long, how much of it
the hub thread spent on a CPU (`cpu_ms`: the rest it waited, for the
interpreter lock or for a core), and the stacks seen (innermost frames
first, counted), so a benchmark says what held the hub, not only that it
was held. Python's cyclic collections are timed too
(gc.callbacks): a collection holds the interpreter lock, so the sampler
cannot look inside one.

With `census`, a full collection that took longer than `census_after`
is followed (at most every `census_every` seconds) by a census of what
the collector walks: the tracked objects of the oldest generation by type,
and the biggest tracked containers with what they hold. A collection's
cost is about the objects it tracks plus the references they hold, so
this says what made it long. The census itself holds the hub (about a
second with a million objects tracked): for finding causes, not for
timing runs.

Lab only (lab/serve.py `--watch-hub FILE`): a product should not pay for
a sampler thread taking the interpreter lock.
"""
from __future__ import annotations

import gc
import itertools
import json
import sys
import threading
import time
from collections import Counter, deque

DEPTH = 16  # innermost frames kept per sample
_SIZED = (dict, list, set, frozenset, tuple, deque)


class HubWatch:
    def __init__(self, path: str, threshold: float = 0.02, sample_after: float = 0.01,
                 interval: float = 0.002, gc_threshold: float = 0.01, census: bool = False,
                 census_after: float = 0.05, census_every: float = 10.0):
        self.threshold, self.sample_after, self.interval = threshold, sample_after, interval
        self.gc_threshold = gc_threshold
        self.census, self.census_after, self.census_every = census, census_after, census_every
        self._census_at = float("-inf")
        self._ident = threading.get_ident  # taken before eventlet makes it name greenthreads
        self.hub_thread = self._ident()  # the caller's: the thread the hub runs in
        self._sleep = time.sleep  # taken before eventlet patches the time module
        self._clock = time.monotonic
        self._cpu = time.thread_time  # the hub thread's CPU time, read by the hub thread
        self._round_cpu = 0.0
        self._out = open(path, "a", buffering=1)
        self._lock = threading.Lock()
        self._round = 0  # rounds of the hub so far
        self._round_started: float | None = None  # None: the hub is polling
        self._stacks: dict[int, Counter] = {}  # round -> stacks sampled in it
        self._gc_started = 0.0

    def start(self) -> None:
        """Wrap the hub's poll (eventlet's default hub class) and start
        sampling; before eventlet patches threading and time."""
        from eventlet import hubs

        hub_class = hubs.get_default_hub().Hub
        poll = hub_class.do_poll
        watch = self

        def do_poll(hub, seconds):
            if watch._ident() != watch.hub_thread:
                return poll(hub, seconds)
            watch._round_ends()
            try:
                return poll(hub, seconds)
            finally:
                watch._round += 1
                watch._round_cpu = watch._cpu()
                watch._round_started = watch._clock()

        hub_class.do_poll = do_poll
        gc.callbacks.append(self._on_gc)
        threading.Thread(target=self._run, name="hubwatch", daemon=True).start()

    def _round_ends(self) -> None:
        started, self._round_started = self._round_started, None
        if started is None:
            return
        took = self._clock() - started
        cpu = self._cpu() - self._round_cpu
        with self._lock:
            stacks = self._stacks.pop(self._round, None)
        if took >= self.threshold:
            stacks = stacks or Counter()
            self._write({"stall_ms": round(took * 1000, 1), "cpu_ms": round(cpu * 1000, 1), "at": time.time(),
                         "samples": sum(stacks.values()), "stacks": [[n, s] for s, n in stacks.most_common(8)]})

    def _write(self, record: dict) -> None:
        self._out.write(json.dumps(record) + "\n")

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started = self._clock()
            return
        took = self._clock() - self._gc_started
        if took >= self.gc_threshold:
            self._write({"gc": info["generation"], "at": time.time(), "ms": round(took * 1000, 1),
                         "collected": info["collected"]})
        if (self.census and info["generation"] == 2 and took >= self.census_after
                and self._clock() - self._census_at >= self.census_every):
            self._write({"census": census(), "at": time.time(), "after_gc_ms": round(took * 1000, 1)})
            self._census_at = self._clock()

    def _run(self) -> None:
        while True:
            self._sleep(self.interval)
            started, number = self._round_started, self._round
            if started is None or self._clock() - started < self.sample_after:
                continue
            frame = sys._current_frames().get(self.hub_thread)
            if frame is None:
                return
            stack = _stack(frame)
            # Not one moment longer: a frame held here keeps its function's
            # locals alive after it returns, and the last reference then
            # goes here, on this thread, which frees them holding the
            # interpreter lock while the hub waits (a plan of 2,000,000
            # flow-mods: 90 ms; docs/performance.rst, "More paths at a million").
            del frame
            with self._lock:
                if self._round == number:
                    self._stacks.setdefault(number, Counter())[stack] += 1


def census(biggest: int = 12, at_least: int = 10_000) -> dict:
    """What a full collection walks: the tracked objects (not frozen) by
    type, the most common first, and the containers among them holding
    `at_least` references, the biggest first, each with the types of what
    it holds (from a few of its items)."""
    objects = gc.get_objects()
    types: Counter = Counter(type(o).__qualname__ for o in objects)
    big = [(len(o), o) for o in objects if type(o) in _SIZED and len(o) >= at_least]
    big.sort(key=lambda x: -x[0])
    return {"tracked": len(objects), "types": types.most_common(12),
            "containers": [[n, _holds(o)] for n, o in big[:biggest]],
            "frozen": gc.get_freeze_count()}


def _holds(container) -> str:
    """`dict int -> Mapping`, `list of int`: a container's type and what
    a few of its items are."""
    name = type(container).__qualname__
    if isinstance(container, dict):
        kinds = Counter(f"{type(k).__qualname__} -> {type(v).__qualname__}"
                        for k, v in itertools.islice(container.items(), 5))
    else:
        kinds = Counter(type(x).__qualname__ for x in itertools.islice(container, 5))
    return f"{name} of " + ", ".join(kinds)


def _stack(frame) -> str:
    """The innermost DEPTH frames, innermost first, read straight off the
    frames into one string (no source lines: `traceback.extract_stack`
    reads them through linecache, a few system calls per frame)."""
    parts = []
    while frame is not None and len(parts) < DEPTH:
        code = frame.f_code
        parts.append(f"{'/'.join(code.co_filename.split('/')[-2:])}:{frame.f_lineno} {code.co_name}")
        frame = frame.f_back
    return " < ".join(parts)
