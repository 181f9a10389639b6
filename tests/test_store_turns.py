"""The SQLite store's one connection, used by the hub and by a native
thread: a step the hub asks for while a big write's transaction is open
on the thread waits for it, and never lands inside it
(controller/offhub.py, `Turns`; store/sqlite.py).

Real SQLite, the real REST API, eventlet's real thread pool. The
controller is a stand-in that does with the store what
controller/app.py's `apply_change` does (the change lock, one write, a
wait for the bridges), so that the test decides when "the bridges"
confirm and when the big write's transaction ends.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from types import SimpleNamespace

import eventlet
from eventlet import event, semaphore
from webob import Request

from lisp_controller.api.rest import Api
from lisp_controller.config import ApiSettings
from lisp_controller.controller.offhub import BIG_ITEMS, Turns
from lisp_controller.store.sqlite import Store

BIG = BIG_ITEMS + 1  # mappings: a write worth a native thread


class StandIn:
    """What the API asks of the controller, around a real store."""

    def __init__(self, store: Store):
        self.store = store
        self.store_error = None
        self.metrics = SimpleNamespace(observe_api=lambda *a: None)
        self.state = SimpleNamespace(cache=SimpleNamespace(get=lambda iid, eid: None), clock=time.time)
        self.change_lock = semaphore.Semaphore(1)
        self.confirmed: dict[int, event.Event] = {}  # by change size: "the bridges" of that change
        self.inside = threading.Event()  # the big write's rows are written, its transaction open
        self.end = threading.Event()  # the test lets the big write's transaction end

    def apply_change(self, change, wait=None, timings=None, instances=None) -> list:
        size = len(change.put)
        with self.change_lock:
            put = self._then_disk_full(change.put) if size >= BIG_ITEMS else change.put
            self.store.write(put, change.delete, change.replace_api, change.put_endpoints,
                             change.delete_endpoints, change.request, big=size >= BIG_ITEMS)
        self.confirmed.setdefault(size, event.Event()).wait()
        return []

    def _then_disk_full(self, mappings):
        """The big write's rows (taken on its native thread), then, once
        the test says so, the disk fills up: the transaction is rolled back."""
        yield from mappings
        self.inside.set()
        self.end.wait(30)
        raise sqlite3.OperationalError("database or disk is full")


def post(api: Api, path: str, body: dict, key: str) -> tuple[int, dict]:
    req = Request.blank(path, method="POST", body=json.dumps(body).encode(),
                        headers={"Content-Type": "application/json", "Idempotency-Key": key})
    resp = req.get_response(api)
    return resp.status_int, json.loads(resp.body)


def wait_for(condition, what: str) -> None:
    for _ in range(20_000):
        if condition():
            return
        eventlet.sleep(0.001)
    raise AssertionError(f"never: {what}")


def test_an_answer_recorded_during_a_big_writes_transaction_is_not_rolled_back_with_it(tmp_path):
    store = Store(tmp_path / "store.db")
    ctl = StandIn(store)
    api = Api(ctl, None, ApiSettings())
    small = eventlet.spawn(post, api, "/v1/mappings",
                           {"iid": 1, "eid": "10.9.0.0/16", "rlocs": ["192.0.2.1"]}, "small-1")
    wait_for(lambda: store.request("small-1") is not None, "the small write is committed")
    bulk = {"mappings": [{"iid": 1, "eid": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}/32", "rlocs": ["192.0.2.2"]}
                         for i in range(BIG)]}
    big = eventlet.spawn(post, api, "/v1/mappings/bulk", bulk, "big-1")
    wait_for(ctl.inside.is_set, "the big write's transaction is open on its thread")
    ctl.confirmed.setdefault(1, event.Event()).send()  # the small write's bridges confirm: its answer is recorded
    eventlet.sleep(0.05)  # (without turns, the answer lands in the open transaction now)
    ctl.end.set()
    status, answer = big.wait()
    assert status == 503 and "disk is full" in answer["error"]["message"], answer
    status, answer = small.wait()
    assert status == 201, answer
    assert store.request("big-1") is None  # rolled back: nothing of it
    recorded = store.request("small-1")
    assert recorded.answered and json.loads(recorded.body)["bridges"] == []
    store.close()
    reopened = Store(tmp_path / "store.db")
    assert reopened.request("small-1").answered
    reopened.close()


def test_turns_run_one_step_at_a_time_and_the_hub_serves_meanwhile():
    turns = Turns()
    order: list[str] = []
    ticks = 0

    def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            eventlet.sleep(0.002)

    def long_step():
        order.append("thread begins")
        time.sleep(0.2)  # a native wait: the hub is free
        order.append("thread ends")

    clock = eventlet.spawn(ticker)
    first = eventlet.spawn(turns.run, True, long_step)
    eventlet.sleep(0.01)
    turns.run(False, order.append, "hub step")
    first.wait()
    clock.kill()
    assert order == ["thread begins", "thread ends", "hub step"]
    assert ticks >= 10  # the hub ran while the step on the hub waited its turn
