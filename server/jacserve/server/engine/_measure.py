"""Measuring a request: wall time per phase and peak memory.

NOTE: [Peak memory on CPU]
PyTorch's CPU allocator keeps no statistics. Two meters are offered:

* ``"rss"`` (default, nearly free): writing ``5`` to ``/proc/self/clear_refs`` resets
  the process's resident-set high-water mark (``VmHWM``); the peak of a request is
  ``VmHWM`` at its end minus ``VmRSS`` at its start. It counts pages, not tensors: memory
  the process already holds (freed by an earlier request and kept by malloc) is reused
  without growing the RSS, so it can under-report, and overlapping requests in one
  process share one mark.
* ``"tensors"`` (exact, a Python call per op): :class:`LiveTensorMeter` sums the bytes of
  live tensor storages op by op and keeps the maximum; per request and per thread.

Both agree on a fresh process (tests/engine: a 64 MiB tensor reads 64 MiB on each). On
CUDA the caching allocator's own statistics are used, which are exact for the device.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "MEMORY_METERS",
    "LiveTensorMeter",
    "PeakMemory",
    "measure_peak_memory",
    "stopwatch",
]

_PROC_STATUS = pathlib.Path("/proc/self/status")
_PROC_CLEAR_REFS = pathlib.Path("/proc/self/clear_refs")


@dataclass
class PeakMemory:
    """Filled in when a :func:`measure_peak_memory` block ends."""

    bytes: int = 0
    method: str = "unavailable"


@dataclass
class _Elapsed:
    seconds: float = 0.0


@contextlib.contextmanager
def stopwatch(device: torch.device | None = None) -> Iterator[_Elapsed]:
    """Time a block with ``time.perf_counter``; on CUDA, synchronize at both ends.

    >>> with stopwatch() as t:
    ...     _ = sum(range(1000))
    >>> t.seconds >= 0.0
    True
    """
    synchronize = device is not None and device.type == "cuda"
    elapsed = _Elapsed()
    if synchronize:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    try:
        yield elapsed
    finally:
        if synchronize:
            torch.cuda.synchronize(device)
        elapsed.seconds = time.perf_counter() - start


class _ProcFiles:
    """``/proc/self/status`` and ``clear_refs``, opened once and then read and written in
    place (3 syscalls a request instead of 3 opens); ``pread`` makes reads thread-safe."""

    def __init__(self) -> None:
        self.status = os.open(_PROC_STATUS, os.O_RDONLY)
        try:
            self.clear_refs = os.open(_PROC_CLEAR_REFS, os.O_WRONLY)
        except OSError:
            os.close(self.status)
            raise


_proc_files: _ProcFiles | None = None
_proc_files_lock = threading.Lock()


def _proc() -> _ProcFiles:
    global _proc_files
    with _proc_files_lock:
        if _proc_files is None:
            _proc_files = _ProcFiles()
        return _proc_files


def open_proc_files() -> None:
    """Open the RSS meter's ``/proc/self`` files now (a worker does, before its sandbox
    makes them unreadable); raises ``OSError`` where they cannot be opened."""
    _proc()


def _status_kib(field: bytes) -> int | None:
    text = os.pread(_proc().status, 8192, 0)
    start = text.find(field + b":")
    if start < 0:
        return None
    return int(text[start + len(field) + 1 : text.index(b"kB", start)])


MEMORY_METERS = ("rss", "tensors")


@contextlib.contextmanager
def measure_peak_memory(device: torch.device, meter: str = "rss") -> Iterator[PeakMemory]:
    """Measure the peak memory a block adds on ``device``. See NOTE: [Peak memory on CPU].

    >>> with measure_peak_memory(torch.device("cpu")) as peak:
    ...     _ = torch.ones(1 << 20)
    >>> peak.method in ("cpu_rss_high_water", "unavailable")
    True
    """
    result = PeakMemory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            yield result
        finally:
            torch.cuda.synchronize(device)
            result.bytes = max(0, torch.cuda.max_memory_allocated(device) - baseline)
            result.method = "cuda_allocator_peak"
        return
    if meter == "tensors":
        with LiveTensorMeter() as tensors:
            try:
                yield result
            finally:
                result.bytes, result.method = tensors.peak_bytes, "cpu_live_tensor_peak"
        return
    baseline_kib = None
    with contextlib.suppress(OSError, ValueError):
        baseline_kib = _status_kib(b"VmRSS")
        os.write(_proc().clear_refs, b"5")
    try:
        yield result
    finally:
        if baseline_kib is not None:
            with contextlib.suppress(OSError, ValueError):
                high_water_kib = _status_kib(b"VmHWM")
                if high_water_kib is not None:
                    result.bytes = max(0, high_water_kib - baseline_kib) * 1024
                    result.method = "cpu_rss_high_water"


def _storage_key(value: Any) -> int | None:
    """The address of a tensor's storage (None for anything else, or no storage)."""
    if not isinstance(value, torch.Tensor):
        return None
    try:
        return int(value.untyped_storage().data_ptr())
    except RuntimeError:
        return None


class LiveTensorMeter(TorchDispatchMode):
    """Peak bytes of tensor storage created inside a block and still alive, op by op.

    A dispatch mode sees every op below autograd and vmap, so it counts the physical
    (batched) tensors. Each new storage is added when an op returns it and subtracted
    when it is freed. It costs a Python call per op, so the engine uses it only to probe
    (see NOTE: [Cost model]), never on every request.

    >>> with LiveTensorMeter() as meter:
    ...     a = torch.ones(1 << 16)
    ...     del a
    ...     b = torch.ones(1 << 15)
    >>> meter.peak_bytes
    262144
    """

    def __init__(self) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._seen: set[int] = set()
        self._lock = threading.Lock()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        given = {_storage_key(t) for t in pytree.tree_leaves((args, kwargs))}
        for tensor in out if isinstance(out, tuple | list) else (out,):
            if isinstance(tensor, torch.Tensor):
                self._track(tensor, given)
        return out

    def _track(self, tensor: torch.Tensor, given: set[int | None]) -> None:
        try:
            storage = tensor.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
        except RuntimeError:  # tensors without storage (dual or functional wrappers)
            return
        with self._lock:
            if size == 0 or key in self._seen or key in given:  # a view allocates nothing
                return
            self._seen.add(key)
            self.live_bytes += size
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        weakref.finalize(storage, self._release, key, size)

    def _release(self, key: int, size: int) -> None:
        with self._lock:
            if key in self._seen:
                self._seen.discard(key)
                self.live_bytes -= size
