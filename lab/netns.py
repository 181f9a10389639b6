"""Network namespaces by name: which one the calling thread is in, and
entering one for the length of a block (setns, through ctypes: the
standard library has no call for it).
"""
from __future__ import annotations

import contextlib
import ctypes
import os
from typing import Iterator


def netns_inode(name: str) -> int | None:
    try:
        return os.stat(f"/run/netns/{name}").st_ino
    except OSError:
        return None


def current_netns() -> str | None:
    """Name of the network namespace the calling *thread* is in, or None.

    The thread-aware twin of ``ip netns identify``: it also sees a namespace
    entered with :func:`netns` (setns changes only the calling thread).
    """
    ino = os.stat("/proc/thread-self/ns/net").st_ino
    try:
        names = sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return None
    for name in names:
        if netns_inode(name) == ino:
            return name
    return None


_CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def netns(name: str) -> Iterator[None]:
    """Run the body with the calling thread inside namespace ``name``.

    For in-process clients (REST calls, sockets) and for processes started
    inside the body, which inherit the namespace. Only the calling thread
    moves; it is moved back on exit even if the body raises. Prefer
    :meth:`Testbed.netns`, which also checks the namespace is ours.
    """
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(original)
    finally:
        os.close(target)
        os.close(original)


# --------------------------------------------------------------------------
# The objects a test works with



def list_netns() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []
