"""Workers' stdout and stderr, relayed by the zygote as log records it writes itself.

A worker does not share the frontend's output: its fds 1 and 2 are a pipe of its own,
and the zygote turns each line into a record of the ``jacserve.worker.output`` logger
with the worker's pid (in JSON logs the line is a quoted field, so a compromised worker
cannot forge records of the frontend's or of other workers). Lines are cut at 4000
characters; past 1 MiB a second of output the rest of that second is dropped.

>>> outputs = WorkerOutputs()
>>> write_end = outputs.open(pid=123)
>>> _ = os.write(write_end, b"hello\\n"); os.close(write_end)
>>> while outputs.fds():  # one line logged, then end of file
...     outputs.drain(outputs.fds()[0])
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

__all__ = ["WorkerOutputs"]

_LOG = logging.getLogger("jacserve.worker.output")
_MAX_LINE = 4000
_BYTES_PER_SECOND = 1 << 20


@dataclass
class _Pipe:
    pid: int
    pending: bytes = b""
    window_start: float = field(default_factory=time.monotonic)
    window_bytes: int = 0


class WorkerOutputs:
    """The read ends of every live worker's output pipe (used by the zygote only)."""

    def __init__(self) -> None:
        self._pipes: dict[int, _Pipe] = {}

    def open(self, pid: int) -> int:
        """A new pipe for worker ``pid`` (fork first with pid 0, then ``adopt``)."""
        read_end, write_end = os.pipe()
        self._pipes[read_end] = _Pipe(pid)
        return write_end

    def adopt(self, write_end: int, pid: int) -> None:
        """Name the worker that got the pipe whose write end is ``write_end`` (closed here)."""
        os.close(write_end)
        for pipe in self._pipes.values():
            if pipe.pid == 0:
                pipe.pid = pid

    def fds(self) -> list[int]:
        """Read ends to wait on."""
        return list(self._pipes)

    def close_inherited(self) -> None:
        """In a forked worker: close every other worker's read end."""
        for fd in self._pipes:
            os.close(fd)
        self._pipes.clear()

    def drain(self, fd: int) -> None:
        """Read what is there and log every complete line; close at end of file."""
        pipe = self._pipes[fd]
        data = os.read(fd, 1 << 16)
        if not data:
            if pipe.pending:
                self._emit(pipe, pipe.pending)
            os.close(fd)
            del self._pipes[fd]
            return
        now = time.monotonic()
        if now - pipe.window_start >= 1.0:
            pipe.window_start, pipe.window_bytes = now, 0
        pipe.window_bytes += len(data)
        if pipe.window_bytes > _BYTES_PER_SECOND:
            return  # a flood: dropped
        *lines, pipe.pending = (pipe.pending + data).split(b"\n")
        if len(pipe.pending) > _MAX_LINE:
            lines.append(pipe.pending)
            pipe.pending = b""
        for line in lines:
            self._emit(pipe, line)

    @staticmethod
    def _emit(pipe: _Pipe, line: bytes) -> None:
        text = line[:_MAX_LINE].decode("utf-8", "replace").rstrip()
        if text:
            _LOG.info(text, extra={"worker_pid": pipe.pid})
