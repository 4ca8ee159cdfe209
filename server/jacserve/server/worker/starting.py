"""Starting one worker for one archive: fork it, hand it the archive, hear its verdict.

Used by :class:`~jacserve.server.worker.pool.WorkerPool` in a background thread, so that a
slow or hostile loader costs no caller more than its own deadline: loading goes on up to
``load_seconds`` whoever is still waiting, and a loader that crashes, hangs or refuses
the archive ends as a :class:`LoadFailure` that names what happened.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field

from jacserve.server import errors
from jacserve.server.worker.protocol import Channel, ProtocolError
from jacserve.server.worker.spawner import WorkerProcess, Zygote

__all__ = [
    "ERRORS",
    "LoadFailure",
    "RunningWorker",
    "death_error",
    "describe_exit",
    "start_worker",
]

ERRORS: dict[str, type[errors.JacserveError]] = {
    cls.__name__: cls
    for cls in (
        errors.InvalidArgument,
        errors.ModelExecutionError,
        errors.NotFound,
        errors.ResourceExhausted,
        errors.FailedPrecondition,
        errors.DeadlineExceeded,
    )
}
"""Worker error names and the errors they become in the frontend."""


class LoadFailure(Exception):
    """An archive could not be loaded.

    Attributes:
        error: what the caller is told.
        crashed: the loader crashed, hung or was killed (not a clean refusal), so the
            archive must never be loaded automatically again.
    """

    def __init__(self, error: errors.JacserveError, *, crashed: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.crashed = crashed


@dataclass(eq=False)
class RunningWorker:
    """A live worker bound to one archive."""

    serial: int
    slot: int
    model_id: str  # the pool's routing key: the archive's id, with @tenant (worker_keys)
    process: WorkerProcess
    channel: Channel
    scratch: str
    info: bytes  # its archive's serialized ModelInfo
    keep_scratch: bool = False  # a compile worker's folder holds the archive's caches
    _stopping: threading.Lock = field(default_factory=threading.Lock)
    _code: int | None = None

    def stop(self) -> int | None:
        """Kill the worker and remove its scratch folder unless it is kept (once, whoever
        asks first); returns its exit code if known."""
        with self._stopping:
            if self.channel.sock.fileno() < 0:
                return self._code
            self.process.kill()
            self.channel.close()
            try:
                self._code = self.process.wait(timeout=10)
            except TimeoutError:
                self._code = None
            self.process.close()
            if not self.keep_scratch:
                shutil.rmtree(self.scratch, ignore_errors=True)
            return self._code


def describe_exit(code: int) -> str:
    """``SIGSEGV`` for a signal, ``exit code 1`` otherwise.

    >>> describe_exit(-11), describe_exit(1)
    ('SIGSEGV', 'exit code 1')
    """
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def death_error(
    code: int | None, exc: BaseException, *, cpu_seconds: float
) -> errors.JacserveError:
    """What the caller is told when its worker died mid-request with exit ``code``
    (``None``: it is alive but broke the protocol).

    >>> type(death_error(-9, EOFError(), cpu_seconds=60)).__name__
    'ResourceExhausted'
    """
    if code == -signal.SIGXCPU:
        return errors.ResourceExhausted(
            f"the request used more than {cpu_seconds:g} CPU seconds, the per-request limit "
            "(--worker-cpu-seconds); its worker was stopped",
            reason=errors.Reason.CPU_LIMIT_EXCEEDED,
            cpu_seconds=f"{cpu_seconds:g}",
        )
    if code == -signal.SIGKILL:
        return errors.ResourceExhausted(
            "the worker running this request was killed (SIGKILL), most likely by the "
            "kernel for using too much memory; use smaller inputs or a memory budget "
            "(options.max_memory_bytes)",
            reason=errors.Reason.OUT_OF_MEMORY,
        )
    how = describe_exit(code) if code is not None else f"protocol error: {exc}"
    return errors.WorkerFailed(
        f"the worker running this request crashed ({how}); the model is faulty on these "
        "inputs. Requests for other models are unaffected"
    )


def _reply(channel: Channel, process: WorkerProcess, until: float) -> tuple[dict, bytes | None]:
    """The worker's next message before ``until``; raises LoadFailure otherwise."""
    while True:
        remaining = until - time.monotonic()
        if remaining <= 0:
            process.kill()
            raise LoadFailure(
                errors.DeadlineExceeded(
                    "loading the archive did not finish within the server's load limit "
                    "(--load-timeout); the archive was not registered",
                    reason=errors.Reason.ARCHIVE_REJECTED,
                ),
                crashed=True,
            )
        ready, _, _ = select.select([channel], [], [], min(remaining, 0.5))
        if ready:
            try:
                return channel.receive(max_payload_bytes=64 << 20)
            except (OSError, EOFError, ProtocolError):
                try:
                    code = process.wait(timeout=5)
                except TimeoutError:
                    process.kill()
                    code = -signal.SIGKILL
                raise LoadFailure(
                    errors.InvalidArgument(
                        f"loading the archive crashed its worker ({describe_exit(code)}); the "
                        "archive is malformed or hostile and was not registered",
                        reason=errors.Reason.ARCHIVE_REJECTED,
                    ),
                    crashed=True,
                ) from None


def start_worker(
    zygote: Zygote,
    *,
    model_id: str,
    archive_path: str,
    serial: int,
    slot: int,
    scratch_root: str,
    load_seconds: float,
    compile_dir: str | None = None,
) -> RunningWorker:
    """Fork a worker, give it the archive at ``archive_path`` and wait for its answer.

    With ``compile_dir`` it is a compile worker whose scratch folder is that directory,
    kept when it stops (inductor's caches for this archive live there).

    Raises:
        LoadFailure: the archive was refused or its loader crashed or hung.
        ZygoteError: no worker could be forked.
    """
    if compile_dir is None:
        scratch = os.path.join(scratch_root, f"worker-{serial}")
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        scratch = compile_dir
    os.makedirs(scratch, mode=0o700, exist_ok=compile_dir is not None)
    role = "serve" if compile_dir is None else "compile"
    process, channel = zygote.fork(scratch_dir=scratch, slot=slot, role=role)
    until = time.monotonic() + load_seconds
    worker = RunningWorker(serial, slot, model_id, process, channel, scratch, b"")
    worker.keep_scratch = compile_dir is not None
    try:
        try:
            header, _ = _reply(channel, process, until)
        except LoadFailure as failure:  # before it saw the archive: not the archive's fault
            raise LoadFailure(
                errors.WorkerFailed(
                    f"a worker could not start ({failure}); see the server log",
                    reason=errors.Reason.WORKER_UNAVAILABLE,
                    retry_after=1.0,
                ),
                crashed=False,
            ) from None
        if not header.get("ready"):
            raise LoadFailure(
                errors.WorkerFailed(
                    "the worker did not start",
                    reason=errors.Reason.WORKER_UNAVAILABLE,
                    retry_after=1.0,
                ),
                crashed=False,
            )
        try:
            with open(archive_path, "rb") as archive:
                channel.send({"op": "load"}, file_fd=archive.fileno())
        except FileNotFoundError:
            raise LoadFailure(
                errors.NotFound(
                    f"model {model_id} is not registered; upload it first "
                    "(UploadModel / Client.upload)",
                    model_id=model_id,
                ),
                crashed=False,
            ) from None
        reply, body = _reply(channel, process, until)
        if not reply.get("ok"):
            error = ERRORS.get(str(reply.get("error")), errors.WorkerFailed)
            message = str(reply.get("message", "refused"))[:4000]
            raise LoadFailure(errors.error_from_reply(error, reply, message), crashed=False)
        worker.info = bytes(body or b"")
        return worker
    except BaseException:
        worker.stop()
        raise
