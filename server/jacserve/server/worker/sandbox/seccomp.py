"""The worker's system-call filter: what a compromised worker cannot ask the kernel.

A classic-BPF seccomp program, built here for x86-64 and AArch64. Refused with ``EPERM``
(``EACCES`` for sockets, ``ENOSYS`` for ``clone3`` so that libc falls back to ``clone``):

- reaching other processes: ``ptrace``, ``process_vm_readv``/``writev``, ``kcmp``, the
  ``pidfd`` calls; and signals (``kill``, ``tgkill``, ``rt_sigqueueinfo``…), resource
  limits (``prlimit64``), scheduling (``sched_set*``, ``setpriority``, ``ioprio_set``)
  and memory placement (``migrate_pages``, ``move_pages``) of any process but this one;
- new programs, processes and namespaces: ``execve``/``execveat`` and process creation
  (``fork``, ``vfork``, ``clone`` without ``CLONE_THREAD``) unless ``allow_exec`` (the C++
  compiler of ``torch.compile``); ``unshare``, ``setns``, ``clone`` with namespace flags;
- state that would outlive the worker: System V shared memory, semaphores and queues, and
  a session or process group of its own (``setsid``, ``setpgid``: whatever a compile
  worker forks stays in its group, which dies with it);
- typing into a terminal: ``ioctl`` ``TIOCSTI``/``TIOCLINUX``;
- the network and kernel attack surface: ``socket`` of any family (the worker's channel is
  already open), ``connect``, ``sendto`` an address, ``socketpair`` but of streams (no
  datagram reaches a pathname Unix socket, which Landlock does not cover),
  ``memfd_secret``, ``bpf``, ``perf_event_open``, ``userfaultfd``, ``io_uring``, ``keyctl``,
  mounts, modules, ``open_by_handle_at``;
- every other ABI (32-bit ``int 0x80`` calls, x32): refused whole, so the filter cannot
  be walked around by switching instruction sets.

>>> program = build_filter(machine="x86_64", own_pid=1234, allow_exec=False)
>>> len(program) % 8, len(program) > 100
(0, True)
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

__all__ = ["build_filter", "install_filter"]

_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_TSYNC = 1
_LD_ABS, _JEQ, _JSET, _JGE, _RET, _AND = 0x20, 0x15, 0x45, 0x35, 0x06, 0x54
_SOCK_STREAM, _SOCK_TYPE_MASK = 1, 0xF
_ALLOW = 0x7FFF0000
_KILL_PROCESS = 0x80000000
_NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
_CLONE_THREAD = 0x00010000
_ARGS = 16  # seccomp_data.args: 8 bytes each, low word first

# name: (x86_64, aarch64)
_SYSCALLS: dict[str, tuple[int, int]] = {
    "seccomp": (317, 277),
    "socket": (41, 198),
    "clone": (56, 220),
    "clone3": (435, 435),
    "execve": (59, 221),
    "execveat": (322, 281),
    "ioctl": (16, 29),
    "socketpair": (53, 199),
    "sendto": (44, 206),
}
# calls that act on the process named by an argument: (x86_64, aarch64, argument index)
_ON_A_PROCESS: dict[str, tuple[int, int, int]] = {
    "kill": (62, 129, 0),
    "tgkill": (234, 131, 0),
    "rt_sigqueueinfo": (129, 138, 0),
    "rt_tgsigqueueinfo": (297, 240, 0),
    "prlimit64": (302, 261, 0),
    "sched_setparam": (142, 118, 0),
    "sched_setscheduler": (144, 119, 0),
    "sched_setaffinity": (203, 122, 0),
    "sched_setattr": (314, 274, 0),
    "migrate_pages": (256, 238, 0),
    "move_pages": (279, 239, 0),
    "get_robust_list": (274, 100, 0),
}
# calls whose first argument says what the second names: (x86_64, aarch64, "a process")
_WHICH_PROCESS: dict[str, tuple[int, int, int]] = {
    "setpriority": (141, 140, 0),  # PRIO_PROCESS (not PRIO_PGRP, PRIO_USER)
    "ioprio_set": (251, 30, 1),  # IOPRIO_WHO_PROCESS
}
_SIGNALS = ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")
# process creation, refused when nothing may be executed (x86_64 only: aarch64 has clone)
_FORKS = {"fork": 57, "vfork": 58}
_SYSV_IPC: dict[str, tuple[int, int]] = {
    "shmget": (29, 194),
    "shmat": (30, 196),
    "shmctl": (31, 195),
    "shmdt": (67, 197),
    "semget": (64, 190),
    "semop": (65, 193),
    "semctl": (66, 191),
    "semtimedop": (220, 192),
    "msgget": (68, 186),
    "msgsnd": (69, 189),
    "msgrcv": (70, 188),
    "msgctl": (71, 187),
}
_TIOCSTI, _TIOCLINUX = 0x5412, 0x541C
_DENIED: dict[str, tuple[int, int]] = {
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "kcmp": (312, 272),
    "tkill": (200, 130),
    "pidfd_open": (434, 434),
    "pidfd_getfd": (438, 438),
    "pidfd_send_signal": (424, 424),
    "process_madvise": (440, 440),
    "unshare": (272, 97),
    "setns": (308, 268),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "reboot": (169, 142),
    "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264),
    "connect": (42, 203),  # Landlock does not cover pathname Unix sockets
    "memfd_secret": (447, 447),
    # a process a worker forks stays in the worker's process group, which the zygote
    # kills whole when the worker ends
    "setsid": (112, 157),
    "setpgid": (109, 154),
}
_ARCH = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}


def _op(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def _errno(number: int) -> int:
    return 0x00050000 | number


def _rule(nr: int, body: list[bytes]) -> list[bytes]:
    """``if nr == NR: body`` (the body ends in a return), else fall through."""
    return [_op(_JEQ, 0, len(body), nr), *body, _op(_LD_ABS, 0, 0, 0)]


def _only_self(own_pid: int, index: int, zero_is_self: bool) -> list[bytes]:
    """Allow when argument ``index`` is this process's pid (or 0, where 0 means "this
    process" rather than "my process group"), else EPERM."""
    self_ids = [0, own_pid] if zero_is_self else [own_pid, own_pid]
    return [
        _op(_LD_ABS, 0, 0, _ARGS + 8 * index + 4),  # high word: pids are below 2**31
        _op(_JEQ, 0, 3, 0),
        _op(_LD_ABS, 0, 0, _ARGS + 8 * index),
        _op(_JEQ, 2, 0, self_ids[0]),
        _op(_JEQ, 1, 0, self_ids[1]),
        _op(_RET, 0, 0, _errno(errno.EPERM)),
        _op(_RET, 0, 0, _ALLOW),
    ]


def build_filter(*, machine: str, own_pid: int, allow_exec: bool) -> bytes:
    """The BPF program for ``machine`` (``platform.machine()``), as bytes.

    Raises:
        KeyError: no syscall table for ``machine``.
    """
    column, audit_arch = _ARCH[machine]
    number = {name: pair[column] for name, pair in _SYSCALLS.items()}
    program = [
        _op(_LD_ABS, 0, 0, 4),  # seccomp_data.arch
        _op(_JEQ, 1, 0, audit_arch),
        _op(_RET, 0, 0, _KILL_PROCESS),  # another ABI: no way around the table below
        _op(_LD_ABS, 0, 0, 0),  # seccomp_data.nr
    ]
    if machine == "x86_64":  # x32 system calls carry bit 30
        program += [_op(_JGE, 0, 1, 0x40000000), _op(_RET, 0, 0, _errno(errno.EPERM))]
    denied = [pair[column] for pair in (*_DENIED.values(), *_SYSV_IPC.values())]
    if not allow_exec:
        denied += [number["execve"], number["execveat"]]
        if machine == "x86_64":
            denied += list(_FORKS.values())
    for nr in denied:
        program += _rule(nr, [_op(_RET, 0, 0, _errno(errno.EPERM))])
    program += _rule(number["socket"], [_op(_RET, 0, 0, _errno(errno.EACCES))])
    program += _rule(number["clone3"], [_op(_RET, 0, 0, _errno(errno.ENOSYS))])
    # clone: never new namespaces; without exec, threads only (no child can outlive us)
    threads_only = [] if allow_exec else [_op(_JSET, 1, 0, _CLONE_THREAD)]
    program += _rule(
        number["clone"],
        [
            _op(_LD_ABS, 0, 0, _ARGS),
            _op(_JSET, 1, 0, _NAMESPACE_FLAGS),  # to the EPERM below either way
            *threads_only,
            *([] if threads_only else [_op(_RET, 0, 0, _ALLOW)]),
            _op(_RET, 0, 0, _errno(errno.EPERM)),
            *([_op(_RET, 0, 0, _ALLOW)] if threads_only else []),
        ],
    )
    program += _rule(
        number["ioctl"],
        [
            _op(_LD_ABS, 0, 0, _ARGS + 8),  # the request: no typing into a terminal
            _op(_JEQ, 1, 0, _TIOCSTI),
            _op(_JEQ, 0, 1, _TIOCLINUX),
            _op(_RET, 0, 0, _errno(errno.EPERM)),
            _op(_RET, 0, 0, _ALLOW),
        ],
    )
    # socketpair: stream pairs only (connected, so no datagram can be addressed elsewhere)
    program += _rule(
        number["socketpair"],
        [
            _op(_LD_ABS, 0, 0, _ARGS + 8),
            _op(_AND, 0, 0, _SOCK_TYPE_MASK),
            _op(_JEQ, 1, 0, _SOCK_STREAM),
            _op(_RET, 0, 0, _errno(errno.EPERM)),
            _op(_RET, 0, 0, _ALLOW),
        ],
    )
    # sendto: never to an address (its fifth argument)
    program += _rule(
        number["sendto"],
        [
            _op(_LD_ABS, 0, 0, _ARGS + 8 * 4),
            _op(_JEQ, 0, 3, 0),
            _op(_LD_ABS, 0, 0, _ARGS + 8 * 4 + 4),
            _op(_JEQ, 0, 1, 0),
            _op(_RET, 0, 0, _ALLOW),
            _op(_RET, 0, 0, _errno(errno.EPERM)),
        ],
    )
    for nr_x86, nr_arm, which in _WHICH_PROCESS.values():
        program += _rule(
            (nr_x86, nr_arm)[column],
            [
                _op(_LD_ABS, 0, 0, _ARGS),
                _op(_JEQ, 1, 0, which),
                _op(_RET, 0, 0, _errno(errno.EPERM)),
                *_only_self(own_pid, 1, True),
            ],
        )
    for name, (nr_x86, nr_arm, index) in _ON_A_PROCESS.items():
        signal_call = name in _SIGNALS  # kill(0, …) signals the whole process group
        program += _rule((nr_x86, nr_arm)[column], _only_self(own_pid, index, not signal_call))
    program.append(_op(_RET, 0, 0, _ALLOW))
    return b"".join(program)


def install_filter(libc: ctypes.CDLL, *, allow_exec: bool) -> str:
    """Install the filter on every thread of this process; returns what was done.

    Needs ``PR_SET_NO_NEW_PRIVS`` set first.
    """
    machine = platform.machine()
    if machine not in _ARCH:
        return f"not restricted (no seccomp filter for {machine})"
    program = build_filter(machine=machine, own_pid=os.getpid(), allow_exec=allow_exec)
    code = ctypes.create_string_buffer(program)
    fprog = ctypes.create_string_buffer(
        struct.pack("HxxxxxxQ", len(program) // 8, ctypes.addressof(code))
    )
    seccomp_nr = _SYSCALLS["seccomp"][_ARCH[machine][0]]
    if libc.syscall(seccomp_nr, _SECCOMP_SET_MODE_FILTER, _SECCOMP_FILTER_FLAG_TSYNC, fprog):
        return f"not restricted (seccomp: {os.strerror(ctypes.get_errno())})"
    exec_note = "the C++ compiler may run (--compile on)" if allow_exec else "no execve"
    return (
        "seccomp: no sockets, no ptrace or process_vm_*, signals to itself only, "
        f"no namespaces, mounts, bpf or io_uring; {exec_note}"
    )
