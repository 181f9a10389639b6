"""Commands and daemons of the lab: running a command with a readable
error, waiting for a condition with a deadline, and what a PID or an OVS
pidfile says about a process. The testbed only ever stops processes it
started, by PID, after checking their command line (see lab/testbed.py).
"""
from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


class TestbedError(RuntimeError):
    """Anything the testbed could not do; the message says what and why."""

    __test__ = False  # not a pytest test class despite the name


class CommandError(TestbedError):
    """A command failed; carries the command line and its stderr."""

    def __init__(self, cmd: Sequence[str], returncode: int, stdout: str, stderr: str):
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"command failed (exit {returncode}): {' '.join(self.cmd)}\n"
            f"stderr: {stderr.strip()}")


class UnsafeTarget(TestbedError):
    """Refused: the action would run outside this run's namespaces."""


# --------------------------------------------------------------------------
# Small helpers


def wait_until(predicate: Callable[[], T], timeout: float = 10.0,
               interval: float = 0.1, what: str | None = None) -> T:
    """Poll ``predicate`` until it returns something truthy; return that.

    Tests must never sleep a fixed time (too short on a busy CI box, too long
    everywhere else): they wait for the condition, with a deadline. Raises
    TimeoutError naming ``what`` (or the predicate) and its last result.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            name = what or getattr(predicate, "__name__", repr(predicate))
            raise TimeoutError(f"timed out after {timeout}s waiting for {name}"
                               f" (last result: {result!r})")
        time.sleep(interval)


def run_command(cmd: Sequence[str], *, env: dict[str, str] | None = None,
         check: bool = True, timeout: float = 60.0,
         input: str | None = None) -> subprocess.CompletedProcess[str]:
    """subprocess.run with captured text output and a readable error."""
    try:
        proc = subprocess.run(list(cmd), env=env, capture_output=True, text=True,
                              timeout=timeout, input=input)
    except subprocess.TimeoutExpired as exc:
        raise CommandError(cmd, -1, str(exc.stdout or ""),
                           f"timed out after {timeout}s") from None
    if check and proc.returncode != 0:
        raise CommandError(cmd, proc.returncode, proc.stdout, proc.stderr)
    return proc


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (PID 1 may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def threads_alive(pid: int) -> bool:
    """True while any thread of ``pid`` runs (not a zombie)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return any(pid_alive(int(t)) for t in tids)


def pidfile_locked(pidfile: Path) -> bool:
    """Does a process hold ``pidfile``'s lock? OVS daemons hold a write
    lock on their pidfile while they run, and a new one aborts if it
    finds it taken. Asked with F_GETLK, which takes no lock itself."""
    try:
        fd = os.open(pidfile, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        query = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        kind = struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, query))[0]
        return kind != fcntl.F_UNLCK
    finally:
        os.close(fd)


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None



def normalize_dpid(datapath_id: str | int) -> str:
    """16 lowercase hex digits, the form other-config:datapath-id wants."""
    if isinstance(datapath_id, int):
        value = datapath_id
    else:
        value = int(datapath_id.replace(":", ""), 16)
    if not 0 <= value < 2**64:
        raise ValueError(f"datapath id out of range: {datapath_id!r}")
    return f"{value:016x}"
