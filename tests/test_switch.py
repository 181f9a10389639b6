"""The bundle writer against a fake datapath that answers every request at
once (the real switch is in test_api.py and test_e2e.py)."""
from __future__ import annotations

import struct
import time
from types import SimpleNamespace

from lisp_controller.openflow import switch as switch_module
from lisp_controller.pipeline.compiler import mapping_flow_mod
from lisp_controller.model import Mapping, prefix_key
from lisp_controller.openflow.bundle import SEND_CHUNK, YIELD_EVERY
from lisp_controller.openflow.switch import IN_FLIGHT, Switch
from os_ken.lib import hub

from lab.processes import wait_until

_HEADER = struct.Struct("!BBHI")


class AnsweringDatapath:
    """Takes writes; answers each request of ours (non-zero xid) as done."""

    def __init__(self):
        self.switch: Switch | None = None
        self.writes: list[bytes] = []

    def send(self, buf: bytes) -> bool:
        self.writes.append(buf)
        offset = 0
        while offset < len(buf):
            _, _, length, xid = _HEADER.unpack_from(buf, offset)
            if xid and xid in self.switch._pending:
                self.switch.on_reply(SimpleNamespace(xid=xid, flags=0))
            offset += length
        return True


def _messages(writes: list[bytes]) -> list[tuple[int, int, bytes]]:
    """(write index, OpenFlow type, message) of every message written."""
    out = []
    for index, buf in enumerate(writes):
        offset = 0
        while offset < len(buf):
            _, mtype, length, _ = _HEADER.unpack_from(buf, offset)
            out.append((index, mtype, buf[offset:offset + length]))
            offset += length
    return out


def _bundle_bytes(writes: list[bytes]) -> bytes:
    """What was written, without the barriers that pace a bundle."""
    return b"".join(m for _, mtype, m in _messages(writes) if mtype != 20)


def _flow_mods(n: int) -> list[tuple[int, bytes]]:
    out = []
    for i in range(n):
        m = Mapping.parse({"iid": 7, "eid": f"10.{i // 256 % 256}.{i % 256}.0/24", "rlocs": ["192.0.2.1"]},
                          source="api")
        out.append(mapping_flow_mod(m, prefix_key(m.iid, m.eid)))
    return out


def _open(monkeypatch) -> tuple:
    dp = AnsweringDatapath()
    sw = dp.switch = Switch(dp, "br-test")
    sleeps = []
    monkeypatch.setattr(switch_module.hub, "sleep", lambda s: sleeps.append(s))
    bundle = sw.open_bundle()
    dp.writes.clear()
    return dp, bundle, sleeps


def test_a_streamed_batch_is_written_whole_without_yielding(monkeypatch):
    # A yield midway lets the state make the next batch while the switch
    # has nothing to parse (it halved OVS's use of its core at 1,000,000).
    dp, bundle, sleeps = _open(monkeypatch)
    mods = _flow_mods(3 * YIELD_EVERY)
    bundle.add_many(mods, batch=True)
    assert sleeps == []
    written = _bundle_bytes(dp.writes)
    assert bundle.count == len(mods)
    assert written.count(mods[-1][1]) == 1  # the tail went out too, not held for the next batch
    assert sum(len(data) + 24 for _, data in mods) == len(written)


def test_a_long_run_yields_for_echo_replies(monkeypatch):
    dp, bundle, sleeps = _open(monkeypatch)
    mods = _flow_mods(3 * YIELD_EVERY)
    bundle.add_many(mods)
    assert len(sleeps) == 3
    assert len(_bundle_bytes(dp.writes)) <= sum(len(data) + 24 for _, data in mods)
    assert all(len(w) >= SEND_CHUNK for w in dp.writes)  # whole chunks only; the rest waits for commit


class SlowDatapath(AnsweringDatapath):
    """Answers requests only when told: a switch still parsing what it was sent."""

    def __init__(self):
        super().__init__()
        self.unanswered: list[int] = []

    def send(self, buf: bytes) -> bool:
        self.writes.append(buf)
        self.unanswered += [xid for _, _, m in _messages([buf]) for xid in [_HEADER.unpack_from(m)[3]] if xid]
        return True

    def answer(self) -> None:
        answered, self.unanswered = self.unanswered, []
        for xid in answered:
            if xid in self.switch._pending:
                self.switch.on_reply(SimpleNamespace(xid=xid, flags=0))


def _bundle_on_a_slow_switch(pace_bundles: bool):
    """A switch that answers only when told, and a bundle open on it, with
    the writes so far forgotten."""
    dp = SlowDatapath()
    sw = dp.switch = Switch(dp, "br-test", pace_bundles=pace_bundles)
    opened = []
    hub.spawn(lambda: opened.append(sw.open_bundle()))
    wait_until(lambda: dp.unanswered, timeout=5)
    dp.answer()
    bundle = wait_until(lambda: opened, timeout=5)[0]
    dp.writes.clear()
    return dp, sw, bundle


def test_a_message_sent_during_a_big_bundle_waits_behind_a_bounded_part_of_it():
    # The bundle's writer waits for the switch to confirm what it has
    # parsed, so a learned flow sent meanwhile is not queued behind the
    # whole bundle but behind at most IN_FLIGHT bytes of it.
    dp, sw, bundle = _bundle_on_a_slow_switch(pace_bundles=True)
    mods = _flow_mods(8 * IN_FLIGHT // 150)
    urgent = mods.pop()[1]
    done = []
    hub.spawn(lambda: done.append(bundle.add_many(mods, batch=True)))
    wait_until(lambda: dp.writes, timeout=5)
    time.sleep(0.3)  # time enough to write the whole bundle, if nothing held the writer
    assert not done
    assert 0 < len(_bundle_bytes(dp.writes)) <= IN_FLIGHT
    sw.send(urgent)
    while not done:
        dp.answer()
        time.sleep(0.001)
    messages = _messages(dp.writes)
    at = next(i for i, (_, mtype, m) in enumerate(messages) if mtype == 14 and m[8:] == urgent[8:])
    before = sum(len(m) for _, mtype, m in messages[:at] if mtype == 4)  # bundle adds
    after = sum(len(m) for _, mtype, m in messages[at:] if mtype == 4)
    assert 0 < before <= IN_FLIGHT
    assert after > 4 * IN_FLIGHT  # most of the bundle went out after it
    assert len(_bundle_bytes(dp.writes)) - len(urgent) == sum(len(d) + 24 for _, d in mods)
    dp.answer()
    bundle.close()
    assert not sw._pending


def test_without_pacing_a_big_bundle_goes_out_without_waiting_for_the_switch():
    # A controller that resolves no misses has nothing urgent to send
    # during a bulk: its bundle is written whole, with no barrier between
    # its parts, however slowly the switch answers.
    dp, sw, bundle = _bundle_on_a_slow_switch(pace_bundles=False)
    mods = _flow_mods(8 * IN_FLIGHT // 150)
    bundle.add_many(mods, batch=True)  # returns though the switch answered nothing
    messages = _messages(dp.writes)
    assert [mtype for _, mtype, _ in messages].count(20) == 0  # no barrier request
    assert len(_bundle_bytes(dp.writes)) == sum(len(d) + 24 for _, d in mods)
    bundle.close()


class RefusingDatapath(AnsweringDatapath):
    """Answers requests, and refuses the flow-mods whose cookie is in `refuse`
    with an error (before the barrier's reply, as a switch does)."""

    def __init__(self, refuse: set[int]):
        super().__init__()
        self.refuse = refuse

    def send(self, buf: bytes) -> bool:
        offset = 0
        while offset < len(buf):
            _, mtype, length, xid = _HEADER.unpack_from(buf, offset)
            if mtype == 14 and struct.unpack_from("!Q", buf, offset + 8)[0] in self.refuse:
                self.switch.on_error(SimpleNamespace(xid=xid, type=5, code=0))  # OFPET_FLOW_MOD_FAILED
            offset += length
        return super().send(buf)


def test_a_few_new_flows_go_out_in_one_write_with_a_barrier_not_a_bundle():
    from lisp_controller.controller.reconcile import Plan
    mods = _flow_mods(3)
    dp = RefusingDatapath({mods[1][0]})
    sw = dp.switch = Switch(dp, "br-test")
    result = sw.apply(Plan((), tuple(mods)))
    assert result.committed and result.sent == 3 and list(result.failed) == [mods[1][0]]
    assert "OFPET_FLOW_MOD_FAILED" in result.failed[mods[1][0]]
    flow_mods, barrier = dp.writes  # the flow-mods in one write, then the barrier; no bundle message
    assert [_HEADER.unpack_from(flow_mods, i)[1] for i in (0, len(mods[0][1]), 2 * len(mods[0][1]))] == [14] * 3
    assert _HEADER.unpack_from(barrier)[1] == 20 and not sw._pending
    # With a delete, or more than a few, the change stays one atomic bundle.
    dp.writes.clear()
    sw.apply(Plan((mods[0][0],), tuple(mods[1:])))
    assert any(_HEADER.unpack_from(w)[1] == 4 for w in dp.writes)  # OFPT_EXPERIMENTER: the bundle


def test_packet_out_to_table_is_os_kens_encoding():
    from lisp_controller.openflow import encode
    for frame in (b"", bytes(range(60)), bytes(1500)):
        assert encode.packet_out_to_table(7, frame) == encode.packet_out_to_table_reference(7, frame)


class _Counted(list):
    """A plan's list that counts the items taken from it (`taken[0]`)."""

    def __init__(self, items, taken: list[int]):
        super().__init__(items)
        self.taken = taken

    def __iter__(self):
        for item in super().__iter__():
            self.taken[0] += 1
            yield item


class BundleRefusingDatapath(AnsweringDatapath):
    """Refuses the bundled flow-mods whose cookie is in `refuse` (an error
    for the bundle message), and then the bundle's commit, as OVS does."""

    def __init__(self, refuse: set[int]):
        super().__init__()
        self.refuse = refuse
        self.refused = False
        self.bundles: list[list[int]] = [[]]  # the cookies of each bundle's flow-mods, in order

    def send(self, buf: bytes) -> bool:
        offset = 0
        while offset < len(buf):
            _, mtype, length, xid = _HEADER.unpack_from(buf, offset)
            exp_type, = struct.unpack_from("!I", buf, offset + 12) if mtype == 4 else (0,)
            cookie, = struct.unpack_from("!Q", buf, offset + 32) if exp_type == 2301 else (None,)
            if cookie is not None:
                self.bundles[-1].append(cookie)
            if cookie in self.refuse:
                self.switch.on_error(SimpleNamespace(xid=xid, type=5, code=0))  # OFPET_FLOW_MOD_FAILED
                self.refused = True
            elif exp_type == 2300 and struct.unpack_from("!H", buf, offset + 20)[0] == 4:
                self.bundles.append([])
            if exp_type == 2300 and struct.unpack_from("!H", buf, offset + 20)[0] == 4 and self.refused:
                self.refused = False  # the commit of a bundle with a refused message fails
                self.switch.on_error(SimpleNamespace(xid=xid, type=17, code=0))  # OFPET_BUNDLE_FAILED
                offset += length
                continue
            offset += length
        return super().send(buf)


def test_a_big_plan_goes_out_taken_a_few_hundred_flows_between_yields(monkeypatch):
    # At a reconnect after a change of a million the plan holds 2,000,000
    # flows; copying them (without the refused ones) before the bundle held
    # the hub 0.6 s in one step (docs/performance.rst, "Single steps at a
    # million"). Each flow is taken as it goes out, the hub let go every
    # few hundred, on the first attempt and on a retry without a refused flow.
    from lisp_controller.controller.reconcile import Plan
    old, new = _flow_mods(4000)[:2000], _flow_mods(4000)[2000:]
    refused = new[1234][0]
    dp = BundleRefusingDatapath({refused})
    sw = dp.switch = Switch(dp, "br-test")
    taken, most = [0], [0]

    def sleep(_seconds):
        most[0] = max(most[0], taken[0])
        taken[0] = 0

    monkeypatch.setattr(switch_module.hub, "sleep", sleep)
    plan = Plan(_Counted((c for c, _ in old), taken), _Counted(new, taken))
    result = sw.apply(plan)
    sleep(0)
    assert result.committed and result.attempts == 2 and list(result.failed) == [refused]
    assert result.sent == len(old) + len(new) - 1
    assert most[0] <= 2 * YIELD_EVERY  # main: 4,000 (the whole plan) before the first yield
    whole = [c for c, _ in old] + [c for c, _ in new]
    assert dp.bundles == [whole, [c for c in whole if c != refused], []]
