"""Landlock (Linux ≥ 5.13): the files, ports and processes a worker can still reach.

Read-only: the Python installation and system libraries, a few global ``/proc`` files,
and the worker's own ``/proc/<pid>`` — not other processes' (the frontend's environment
and memory map stay out of reach even where uids match). Read-write: its scratch folder
and ``/dev/null`` (and GPU device nodes where given). Where the kernel has them (ABI 4
and 6): no TCP bind or connect, no signals to processes outside the worker's own
Landlock domain, no connecting to abstract Unix sockets outside it. Execution of files is
allowed only below ``exec_paths`` (the C++ toolchain when ``torch.compile`` needs it).
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Iterable

__all__ = ["restrict"]

_CREATE, _ADD_RULE, _RESTRICT = 444, 445, 446
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1, 2, 4, 8
_TRUNCATE, _IOCTL_DEV = 1 << 14, 1 << 15
_FILE_ONLY = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV
_NET_BIND_TCP, _NET_CONNECT_TCP = 1, 2
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1, 2
_PATH_BENEATH = 1
_GLOBAL_PROC = (
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/sys/vm/overcommit_memory",
    "/proc/sys/kernel/cap_last_cap",
    "/proc/driver/nvidia",  # the CUDA driver's version and parameters, where present
)
_READ_ONLY_DEVICES = ("/dev/urandom", "/dev/random", "/dev/zero")


def _handled_fs(abi: int) -> int:
    handled = (1 << 13) - 1
    if abi >= 2:
        handled |= 1 << 13  # REFER
    if abi >= 3:
        handled |= _TRUNCATE
    if abi >= 5:
        handled |= _IOCTL_DEV
    return handled


def restrict(
    libc: ctypes.CDLL,
    *,
    read_paths: Iterable[str],
    scratch: str,
    device_files: Iterable[str] = (),
    exec_paths: Iterable[str] = (),
) -> str:
    """Confine this process; returns what was done (or why nothing could be).

    Raises:
        OSError: the kernel refused a rule or the restriction itself.
    """
    abi = libc.syscall(_CREATE, None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    if abi < 1:
        return f"not restricted (Landlock unavailable: {os.strerror(ctypes.get_errno())})"
    fs = _handled_fs(abi)
    net = _NET_BIND_TCP | _NET_CONNECT_TCP if abi >= 4 else 0
    scoped = _SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL if abi >= 6 else 0
    attr = struct.pack("QQQ", fs, net, scoped)[: 24 if abi >= 6 else 16 if abi >= 4 else 8]
    ruleset = libc.syscall(_CREATE, attr, len(attr), 0)
    if ruleset < 0:
        return f"not restricted (Landlock: {os.strerror(ctypes.get_errno())})"
    try:
        own_proc = f"/proc/{os.getpid()}"
        for path in dict.fromkeys(os.path.realpath(p) for p in read_paths if p):
            _allow(libc, ruleset, path, _READ_FILE | _READ_DIR)
        for path in (own_proc, *_GLOBAL_PROC, *_READ_ONLY_DEVICES):
            _allow(libc, ruleset, path, _READ_FILE | _READ_DIR)
        for path in exec_paths:
            _allow(libc, ruleset, os.path.realpath(path), _EXECUTE | _READ_FILE | _READ_DIR)
        _allow(libc, ruleset, os.path.realpath(scratch), fs & ~(_IOCTL_DEV | _EXECUTE))
        for path in ("/dev/null", *device_files):
            _allow(libc, ruleset, path, _READ_FILE | _WRITE_FILE | (_IOCTL_DEV & fs))
        if libc.syscall(_RESTRICT, ruleset, 0):
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    extras = []
    if net:
        extras.append("no TCP")
    if scoped:
        extras.append("signals and abstract sockets scoped to itself")
    return (
        f"read-only Python and system paths and its own /proc, read-write {scratch}"
        + (f"; {', '.join(extras)}" if extras else "")
        + f" (Landlock ABI {abi})"
    )


def _allow(libc: ctypes.CDLL, ruleset: int, path: str, access: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # a path that does not exist needs no rule
    try:
        if not os.path.isdir(path):
            access &= _FILE_ONLY
        rule = struct.pack("=Qi", access, fd)
        if libc.syscall(_ADD_RULE, ruleset, _PATH_BENEATH, rule, 0):
            raise OSError(ctypes.get_errno(), f"landlock_add_rule for {path} failed")
    finally:
        os.close(fd)
