"""Confinement of a worker process, applied after imports and before any model loads.

Three layers, each used where the kernel offers it and reported otherwise:

- **resource limits** (``setrlimit``): address space and open files (the CPU seconds per
  request are :mod:`~jacserve.server.worker.cpu_budget`'s);
- **no network** (seccomp): ``socket()`` for anything but Unix sockets fails with EACCES;
- **files** (Landlock, Linux ≥ 5.13): read-only access to the Python installation, the
  system libraries and the model directory; read-write only in the worker's scratch
  directory. Everything else, ``/etc``, home directories and the server's own
  configuration included, cannot be opened.

Linux only; on other systems only the resource limits apply.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import resource
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["SandboxSettings", "apply_sandbox"]

_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_TSYNC = 1
_SYSCALLS = {  # machine: (seccomp, socket, audit arch)
    "x86_64": (317, 41, 0xC000003E),
    "aarch64": (277, 198, 0xC00000B7),
}
_LANDLOCK_CREATE, _LANDLOCK_ADD_RULE, _LANDLOCK_RESTRICT = 444, 445, 446
_LL_EXECUTE, _LL_WRITE_FILE, _LL_READ_FILE, _LL_READ_DIR = 1, 2, 4, 8
_LL_READ = _LL_EXECUTE | _LL_READ_FILE | _LL_READ_DIR
_SYSTEM_READ_PATHS = ("/usr", "/lib", "/lib64", "/bin", "/proc", "/sys", "/dev")


@dataclass(frozen=True)
class SandboxSettings:
    """What a worker may use.

    Attributes:
        memory_bytes: address-space limit (0: none; CUDA workers need none).
        open_files: most open file descriptors.
        scratch_dir: the one writable directory.
        read_dirs: extra read-only directories (the model directory).
        device_files: device nodes opened read-write (``/dev/nvidia*`` for CUDA).
        restrict_files: apply Landlock where available.
        restrict_network: apply the seccomp socket filter where available.
    """

    memory_bytes: int
    open_files: int
    scratch_dir: str
    read_dirs: tuple[str, ...] = ()
    device_files: tuple[str, ...] = ()
    restrict_files: bool = True
    restrict_network: bool = True


def apply_sandbox(settings: SandboxSettings) -> dict[str, str]:
    """Confine this process; returns what each layer did, for the worker's log line."""
    applied: dict[str, str] = {}
    if settings.memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (settings.memory_bytes, settings.memory_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (settings.open_files, settings.open_files))
    applied["rlimits"] = (
        f"address space {settings.memory_bytes or 'unlimited'}, files {settings.open_files}"
    )
    if sys.platform != "linux":
        return applied
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if settings.restrict_network:
        applied["network"] = _deny_network(libc)
    if settings.restrict_files:
        imports = [p for p in sys.path if p and os.path.realpath(p) != os.getcwd()]
        read = [*_SYSTEM_READ_PATHS, sys.prefix, sys.base_prefix, *imports, *settings.read_dirs]
        applied["files"] = _restrict_files(libc, read, settings.scratch_dir, settings.device_files)
    return applied


def _deny_network(libc: ctypes.CDLL) -> str:
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        return f"not restricted (no seccomp filter for {platform.machine()})"
    seccomp_nr, socket_nr, arch = numbers

    def op(code: int, jt: int, jf: int, k: int) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)

    ld_abs, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET
    allow, deny = 0x7FFF0000, 0x00050000 | errno.EACCES
    program = b"".join(
        [
            op(ld_abs, 0, 0, 4),  # seccomp_data.arch
            op(jeq, 1, 0, arch),
            op(ret, 0, 0, allow),  # another ABI: leave it alone
            op(ld_abs, 0, 0, 0),  # seccomp_data.nr
            op(jeq, 0, 3, socket_nr),
            op(ld_abs, 0, 0, 16),  # seccomp_data.args[0]: the address family
            op(jeq, 1, 0, 1),  # AF_UNIX
            op(ret, 0, 0, deny),
            op(ret, 0, 0, allow),
        ]
    )
    code = ctypes.create_string_buffer(program)
    fprog = struct.pack("HxxxxxxQ", len(program) // 8, ctypes.addressof(code))
    fprog_buffer = ctypes.create_string_buffer(fprog)
    if libc.syscall(seccomp_nr, _SECCOMP_SET_MODE_FILTER, _SECCOMP_FILTER_FLAG_TSYNC, fprog_buffer):
        return f"not restricted (seccomp: {os.strerror(ctypes.get_errno())})"
    return "Unix sockets only (seccomp)"


def _restrict_files(
    libc: ctypes.CDLL, read_paths: Iterable[str], scratch: str, device_files: Iterable[str]
) -> str:
    abi = libc.syscall(_LANDLOCK_CREATE, None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    if abi < 1:
        return f"not restricted (Landlock unavailable: {os.strerror(ctypes.get_errno())})"
    handled = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0)
    ruleset = libc.syscall(_LANDLOCK_CREATE, struct.pack("Q", handled), 8, 0)
    if ruleset < 0:
        return f"not restricted (Landlock: {os.strerror(ctypes.get_errno())})"
    try:
        for path in dict.fromkeys(os.path.realpath(p) for p in read_paths if p):
            _allow(libc, ruleset, path, _LL_READ)
        _allow(libc, ruleset, os.path.realpath(scratch), handled)
        for path in ("/dev/null", *device_files):
            _allow(libc, ruleset, path, _LL_READ_FILE | _LL_WRITE_FILE)
        # the RSS peak-memory meter resets the high-water mark through this file
        _allow(libc, ruleset, os.path.realpath("/proc/self/clear_refs"), _LL_WRITE_FILE)
        if libc.syscall(_LANDLOCK_RESTRICT, ruleset, 0):
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    return f"read-only system and Python paths, read-write {scratch} (Landlock ABI {abi})"


def _allow(libc: ctypes.CDLL, ruleset: int, path: str, access: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # a path that does not exist needs no rule
    try:
        if not os.path.isdir(path):
            access &= _LL_EXECUTE | _LL_READ_FILE | _LL_WRITE_FILE | (1 << 14)
        rule = struct.pack("=Qi", access, fd)
        if libc.syscall(_LANDLOCK_ADD_RULE, ruleset, 1, rule, 0):
            raise OSError(ctypes.get_errno(), f"landlock_add_rule for {path} failed")
    finally:
        os.close(fd)
