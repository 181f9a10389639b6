"""offhub.py: a big step runs on a native thread while the hub keeps serving."""
import threading

import eventlet

from lisp_controller.controller.offhub import off_hub


def _busy(seconds: float) -> int:
    """Pure CPU for `seconds`, never yielding to the hub; its thread's ID."""
    import time
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return threading.get_ident()


def _ticks_during(big: bool) -> tuple[int, int]:
    ticks = 0

    def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            eventlet.sleep(0.005)

    thread = eventlet.spawn(ticker)
    eventlet.sleep(0)  # let it start
    before = ticks
    ident = off_hub(big, _busy, 0.3)
    counted = ticks - before
    thread.kill()
    return counted, ident


def test_a_big_step_leaves_the_hub_free_and_a_small_one_stays_on_it():
    ticks, ident = _ticks_during(big=True)
    assert ident != threading.get_ident()
    assert ticks >= 10  # the hub ran every few ms during 0.3 s of work
    ticks, ident = _ticks_during(big=False)
    assert ident == threading.get_ident() and ticks == 0


def test_the_steps_error_is_raised_by_the_caller():
    def fail():
        raise ValueError("bad body")
    for big in (True, False):
        try:
            off_hub(big, fail)
        except ValueError as e:
            assert str(e) == "bad body"
        else:
            raise AssertionError("no error")
