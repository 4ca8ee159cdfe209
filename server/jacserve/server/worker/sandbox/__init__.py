"""Confinement of a worker process, applied after fork and before its archive arrives.

A worker is assumed compromised the moment it loads an archive, so each layer limits what
that costs, and each is used where the kernel offers it and reported otherwise:

- **identity** (:mod:`.identity`): a uid of its own or no capabilities, non-dumpable;
- **resource limits** (``setrlimit``): address space, open files, file size, no core
  dumps (the CPU seconds per request are :mod:`~jacserve.server.worker.cpu_budget`'s);
- **system calls** (:mod:`.seccomp`): no sockets, no reaching other processes (ptrace,
  process_vm_*, signals), no exec (unless compiling), no namespaces;
- **files, ports, signals** (:mod:`.landlock`): read-only Python and system paths and its
  own ``/proc``; read-write only its scratch folder; the model store is not readable at
  all — a worker receives only its own archive, as an open descriptor.

Linux only; on other systems only the resource limits apply.
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys
from dataclasses import dataclass

from jacserve.server.worker.sandbox import identity, landlock, seccomp

__all__ = ["SandboxSettings", "apply_sandbox", "python_paths"]

_PR_SET_NO_NEW_PRIVS = 38
_MAX_FILE_BYTES = 4 << 30  # one scratch file (compiled programs are megabytes)
_SYSTEM_READ_PATHS = ("/usr", "/lib", "/lib64", "/bin", "/sys")
_TOOLCHAIN_PATHS = ("/usr/bin", "/usr/lib", "/usr/libexec", "/usr/local/bin", "/bin")


@dataclass(frozen=True)
class SandboxSettings:
    """What a worker may use.

    Attributes:
        memory_bytes: address-space limit (0: none; CUDA workers need none).
        open_files: most open file descriptors.
        scratch_dir: the one writable directory.
        slot: the worker's slot among live workers (its uid when it gets one).
        own_uid: as root, switch to a uid of its own (when Python is world-readable).
        allow_exec: let it run the C++ toolchain (``torch.compile`` on the CPU).
        device_files: device nodes opened read-write (``/dev/nvidia*`` for CUDA).
        restrict_files: apply Landlock where available.
        restrict_calls: apply the seccomp filter where available.
    """

    memory_bytes: int
    open_files: int
    scratch_dir: str
    slot: int = 0
    own_uid: bool = False
    allow_exec: bool = False
    device_files: tuple[str, ...] = ()
    restrict_files: bool = True
    restrict_calls: bool = True


def python_paths() -> list[str]:
    """The folders a worker reads Python code from (its cwd excluded).

    >>> sys.prefix in python_paths()
    True
    """
    imports = [p for p in sys.path if p and os.path.realpath(p) != os.getcwd()]
    return [sys.prefix, sys.base_prefix, *imports]


def apply_sandbox(settings: SandboxSettings) -> dict[str, str]:
    """Confine this process; returns what each layer did, for the worker's log line."""
    applied: dict[str, str] = {}
    if settings.memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (settings.memory_bytes, settings.memory_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (settings.open_files, settings.open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (_MAX_FILE_BYTES, _MAX_FILE_BYTES))
    applied["rlimits"] = (
        f"address space {settings.memory_bytes or 'unlimited'}, files {settings.open_files}"
    )
    if sys.platform != "linux":
        return applied
    libc = ctypes.CDLL(None, use_errno=True)
    applied["identity"] = identity.become_worker(
        libc, slot=settings.slot, scratch=settings.scratch_dir, own_uid=settings.own_uid
    )
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if settings.restrict_files:
        applied["files"] = landlock.restrict(
            libc,
            read_paths=[*_SYSTEM_READ_PATHS, *python_paths()],
            scratch=settings.scratch_dir,
            device_files=settings.device_files,
            # inductor runs the C++ compiler and Python itself; both stay in this sandbox
            exec_paths=(*_TOOLCHAIN_PATHS, os.path.realpath(sys.executable))
            if settings.allow_exec
            else (),
        )
    if settings.restrict_calls:
        applied["calls"] = seccomp.install_filter(libc, allow_exec=settings.allow_exec)
    return applied
