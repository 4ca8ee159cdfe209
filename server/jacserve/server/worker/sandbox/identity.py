"""Who a worker is: not the frontend's user where that can be arranged, never privileged.

- Started as root with a Python installation every user can read: the worker becomes a
  uid of its own (``FIRST_WORKER_UID + slot``), so the kernel's ownership rules already
  keep it from other workers and the frontend.
- Started as root otherwise (a Python under ``/root``, say): the worker stays uid 0 but
  drops every capability, for good (bounding set, ambient set, locked securebits), and is
  made non-dumpable so other workers cannot read its ``/proc`` files or memory.
- Not root: the frontend's own uid, which has no capabilities; the worker is made
  non-dumpable for the same reason.

The frontend is non-dumpable (:func:`make_non_dumpable` in ``serve``), so a worker with
its uid and no ``CAP_SYS_PTRACE`` cannot read its environment, memory or descriptors.

>>> world_readable(["/"])
True
"""

from __future__ import annotations

import ctypes
import os
import stat
from collections.abc import Iterable

__all__ = ["FIRST_WORKER_UID", "become_worker", "make_non_dumpable", "world_readable"]

FIRST_WORKER_UID = 60000
"""The uid of worker slot 0 when the server runs as root; slot ``k`` gets ``+ k``."""

_PR_SET_DUMPABLE = 4
_PR_CAPBSET_DROP = 24
_PR_SET_SECUREBITS = 28
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_LOCKED_SECUREBITS = 0xEF  # NOROOT, NO_SETUID_FIXUP, KEEP_CAPS off, NO_CAP_AMBIENT_RAISE; locked
_CAPABILITY_VERSION_3 = 0x20080522


def make_non_dumpable(libc: ctypes.CDLL | None = None) -> None:
    """Hide this process's ``/proc`` files and memory from processes of the same uid."""
    libc = libc or ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE) failed")


def world_readable(paths: Iterable[str]) -> bool:
    """Whether every path (and each folder above it) can be read by any user."""
    for path in paths:
        current = os.path.realpath(path)
        while True:
            try:
                mode = os.stat(current).st_mode
            except OSError:
                break  # a missing sys.path entry is nothing to read
            needed = stat.S_IXOTH | (stat.S_IROTH if current == os.path.realpath(path) else 0)
            if stat.S_ISDIR(mode) and mode & needed != needed:
                return False
            if current == "/":
                break
            current = os.path.dirname(current)
    return True


def become_worker(libc: ctypes.CDLL, *, slot: int, scratch: str, own_uid: bool) -> str:
    """Give up the frontend's identity; returns what this worker is now.

    Args:
        slot: the worker's slot, unique among live workers (its uid when one is used).
        scratch: its writable folder, handed over to its new uid.
        own_uid: switch to a uid of its own when running as root.
    """
    if os.geteuid() != 0:
        make_non_dumpable(libc)
        return f"uid {os.getuid()} (the frontend's, unprivileged), non-dumpable"
    if own_uid:
        uid = FIRST_WORKER_UID + slot
        try:
            os.chown(scratch, uid, uid)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        except OSError:
            pass  # a user namespace without that uid: drop capabilities instead
        else:
            libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)  # its own uid; its /proc stays its own
            return f"uid {uid} of its own, no capabilities"
    _drop_capabilities(libc)
    make_non_dumpable(libc)
    return "uid 0 without any capability, non-dumpable"


def _drop_capabilities(libc: ctypes.CDLL) -> None:
    with open("/proc/sys/kernel/cap_last_cap") as last:
        last_cap = int(last.read())
    for cap in range(last_cap + 1):
        libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    if libc.prctl(_PR_SET_SECUREBITS, _LOCKED_SECUREBITS, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECUREBITS) failed")
    header = (ctypes.c_uint32 * 2)(_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable: all empty
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")
