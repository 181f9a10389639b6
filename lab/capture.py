"""A packet capture in one of the lab's namespaces (dumpcap), decoded by
tshark: the independent check of what the controller and OVS put on the
wire.
"""
from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from lab.processes import TestbedError, run_command, wait_until

if TYPE_CHECKING:
    from lab.testbed import Testbed

LISP_DATA_PORT = 4341


class Capture:
    """A dumpcap capture inside one of our namespaces, decoded with tshark.

    Start waits for dumpcap's "Capturing on" line so no packet sent after
    start() is missed; stop() signals dumpcap by PID so it flushes the file.
    """

    def __init__(self, testbed: "Testbed", ns: str, iface: str, path: Path) -> None:
        self.testbed = testbed
        self.ns = ns
        self.iface = iface
        self.path = path
        self.stderr_path = path.with_suffix(".stderr")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> "Capture":
        self.testbed.assert_ours(self.ns)
        with open(self.stderr_path, "wb") as err:
            self.proc = self.testbed.spawn(
                self.ns, ["dumpcap", "-i", self.iface, "-w", str(self.path)],
                stdout=subprocess.DEVNULL, stderr=err)

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise TestbedError(f"dumpcap exited: {self.stderr_path.read_text()}")
            return "Capturing on" in self.stderr_path.read_text(errors="replace")

        wait_until(ready, timeout=timeout, what=f"dumpcap on {self.iface}")
        return self

    def stop(self, settle: float = 0.6, timeout: float = 10.0) -> None:
        """Stop dumpcap once it has written everything already on the wire.

        libpcap hands packets over a ring-buffer block at a time (the block
        retires after dumpcap's 250 ms read timeout), and dumpcap exits on
        SIGTERM without draining the current block: stopping right after the
        traffic loses its last packets. So first wait until dumpcap's
        "Packets: N" progress lines (stderr) have been quiet for ``settle``
        seconds (at most ``timeout``), then signal it by PID.
        """
        if self.proc is None or self.proc.poll() is not None:
            return
        last = [-1, time.monotonic()]

        def quiet() -> bool:
            size = self.stderr_path.stat().st_size
            now = time.monotonic()
            if size != last[0]:
                last[:] = [size, now]
                return False
            return now - last[1] >= settle

        with contextlib.suppress(TimeoutError):
            wait_until(quiet, timeout=timeout, interval=0.05)
        self.testbed.stop_child(self.proc, timeout)

    def __enter__(self) -> "Capture":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def decode(self, fields: Sequence[str], display_filter: str | None = None,
               extra: Sequence[str] = ()) -> list[str]:
        """``tshark -r FILE -d udp.port==4341,lisp-data -T fields -e ...``;
        one tab-separated line per packet (empty lines dropped)."""
        cmd = ["tshark", "-r", str(self.path), "-d", f"udp.port=={LISP_DATA_PORT},lisp-data",
               "-T", "fields"]
        for f in fields:
            cmd += ["-e", f]
        if display_filter:
            cmd += ["-Y", display_filter]
        cmd += list(extra)
        out = run_command(cmd, timeout=60).stdout
        return [line for line in out.splitlines() if line.strip()]


# --------------------------------------------------------------------------
# The testbed
