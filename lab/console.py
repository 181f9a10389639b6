"""What the lab's commands (``python -m lab.seed``, ``lab.etcd``,
``lab.cluster``, ``lab.scenario``) do at the console: hold what they built
until Ctrl-C or SIGTERM, then let their with-blocks tear it all down."""
from __future__ import annotations

import signal


def stop_on_sigterm() -> None:
    """SIGTERM tears down exactly like Ctrl-C does."""
    signal.signal(signal.SIGTERM, _raise_interrupt)


def until_interrupted(message: str) -> None:
    """Print `message` and wait for Ctrl-C (or SIGTERM, after
    `stop_on_sigterm`); return then, so the caller's cleanup runs."""
    try:
        # Inside the try: a SIGTERM may arrive as soon as the line is read.
        print(message, flush=True)
        signal.pause()
    except KeyboardInterrupt:
        pass


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
