"""The etcd store lets the controller's hub go while it works on a big
change (docs/performance.rst, "The etcd store at a million"): the rows of
a change, its chunks, a change read back and composed are made in slices
(controller/slices.py), and a controller's own change is not read back
from the watch.

The pure tests count the items between pauses with a clock that never
moves (so only the count ends a slice); the others use a real three-member
etcd cluster (lab/etcd.py) and count the store's pauses.
"""
from __future__ import annotations

import gc
import sys
import threading
import time

from lab.processes import wait_until
from lisp_controller.controller.slices import Slices
from lisp_controller.store.etcd import EtcdStore
from lisp_controller.store.segments import RowDelta, compose, decode, encode

from .test_etcd_store import View, mapping, settings

N = 12_000
MOST = 500


class Gaps:
    """A Slices' pause that notes how many items each slice held."""

    def __init__(self) -> None:
        self.slices = Slices(self.pause, most=MOST, clock=lambda: 0.0)
        self.pauses = 0

    def pause(self) -> None:
        self.pauses += 1


def many(n: int = N, rloc: str = "192.168.50.2") -> list:
    return [mapping(f"10.{60 + i // 65536}.{i // 256 % 256}.{i % 256}/32", rloc) for i in range(n)]


def test_rows_chunks_decoding_composing_and_mappings_of_a_big_change_let_the_hub_go():
    put = many()
    delete = [m.key for m in many(N, "192.168.50.3")]
    whole = RowDelta.of_change(put, delete[: N // 2])
    steps = []

    def step(make):
        gaps = Gaps()
        out = make(gaps.slices)
        steps.append(gaps.pauses)
        return out

    rows = step(lambda s: RowDelta.of_change(put, delete[: N // 2], slices=s))
    assert rows == whole
    chunks = step(lambda s: encode(rows, 100_000, s))
    assert chunks == encode(whole, 100_000)
    back = step(lambda s: decode(chunks, s))
    assert back == decode(encode(whole, 100_000))
    later = RowDelta.of_change(many(N, "192.168.50.4"))
    composed = step(lambda s: compose([decode(chunks), later], s))
    assert composed == compose([decode(chunks), later])
    mappings = step(lambda s: back.delta(s).put)
    assert mappings == whole.delta().put
    # every step paused at least once per MOST items it went over
    assert all(p >= N // MOST for p in steps), steps


def test_a_big_write_and_a_change_read_from_the_watch_let_the_hub_go(etcd_cluster):
    writer_pauses, reader_pauses = [], []
    a = EtcdStore(settings(etcd_cluster), pause=lambda: writer_pauses.append(1))
    b = EtcdStore(settings(etcd_cluster), pause=lambda: reader_pauses.append(1))
    seen = View(b.load())
    a.load()
    b.follow(seen.apply, threading.Lock())
    a.write(put=many(), big=True)
    # its rows, its chunks and the rows let go after, a slice of at most 2,000 each
    assert len(writer_pauses) >= 3 * N // 2000
    wait_until(lambda: len(seen.mappings) == N, timeout=30, what="B has A's change")
    # decoded, made mappings and the rows let go after, in slices
    wait_until(lambda: len(reader_pauses) >= 3 * N // 2000, timeout=10, what="B's pauses")
    before = len(writer_pauses)
    a.write(put=[mapping("10.99.0.0/16", "192.168.50.9")])  # small: no slices
    assert len(writer_pauses) == before
    for s in (a, b):
        s.close()


def test_no_collection_runs_inside_a_big_changes_slices_but_between_them(etcd_cluster):
    """A collection over a million mappings' objects takes 20-40 ms; one
    inside a slice made hub rounds of 60-80 ms (bench/hub.py --store etcd):
    the collector is paused in the slices and runs in their pauses."""
    inside = []  # the steps a collection started in

    def started(phase, info):
        if phase != "start":
            return
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_name in ("of_change", "encode", "decode", "delta") and \
                    frame.f_code.co_filename.endswith("segments.py"):
                inside.append(frame.f_code.co_name)
                return
            frame = frame.f_back

    a = EtcdStore(settings(etcd_cluster), pause=lambda: None)
    b = EtcdStore(settings(etcd_cluster), pause=lambda: None)
    seen = View(b.load())
    a.load()
    b.follow(seen.apply, threading.Lock())
    gc.callbacks.append(started)
    try:
        a.write(put=many(), big=True)
        wait_until(lambda: len(seen.mappings) == N, timeout=30, what="B has A's change")
    finally:
        gc.callbacks.remove(started)
    assert inside == []
    for s in (a, b):
        s.close()


def test_a_controllers_own_change_is_not_read_back_from_its_watch(etcd_cluster):
    """The watch may bring a change before its writer has the commit's
    answer (seen under eventlet at 100,000 mappings: 280 ms of decoding
    for nothing); the write adopts it, the watch leaves it alone."""
    pausing = []  # the threads that paused
    a = EtcdStore(settings(etcd_cluster), pause=lambda: pausing.append(threading.current_thread().name))
    seen = View(a.load())
    lock = threading.Lock()
    a.follow(seen.apply, lock)
    wait_until(lambda: a.watching is not None, timeout=10, what="A's watch")
    adopt = a._adopt

    def late_answer(*args):  # the commit's answer comes after the watch's event
        time.sleep(1.0)
        adopt(*args)

    a._adopt = late_answer
    with lock:  # as the controller's change lock
        a.write(put=many(), big=True)
    a._adopt = adopt
    assert a.catch_up(10)
    time.sleep(0.5)
    assert "etcd-watch" not in pausing  # the watch read nothing back
    assert seen.deltas == []  # and handed nothing to its own controller
    a.close()
