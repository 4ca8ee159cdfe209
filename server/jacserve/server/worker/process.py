"""A worker process: the only place user code (an archive) is loaded and run.

Forked by the zygote (:mod:`~jacserve.server.worker.zygote`), a worker confines itself
(:mod:`~jacserve.server.worker.sandbox`), says ``ready``, receives its one archive as an
open file descriptor (``{"op": "load"}``), loads and checks it — inside the sandbox —
answers with its description, and then serves requests for that archive only, one at a
time, until the socket closes. Replies are ``{"ok": true, ...}`` with the serialized
response in shared memory, or ``{"ok": false, "error": CLASS, "message": TEXT}``. A reply
may carry ``"compile": [KEY, ...]``: the request asked for compiled programs, which a
*compile worker* (role ``compile``: it may run the C++ toolchain) builds from
``{"op": "compile"}`` recipes before ``{"op": "promote"}`` makes it a serving worker
(:mod:`~jacserve.server.worker.compile_job`).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import torch

from jacserve.codec import TensorCodecError
from jacserve.server import errors
from jacserve.server.engine import _measure
from jacserve.server.engine._function import is_allocation_failure
from jacserve.server.registry import ArchiveRegistry, OperatorAllowlist
from jacserve.server.worker.compile_job import compile_recipe, drop_exec, report_requests
from jacserve.server.worker.cpu_budget import CpuBudget
from jacserve.server.worker.handlers import DerivativeHandlers, HandlerSettings
from jacserve.server.worker.operations import DERIVATIVE_REQUESTS, STREAMING_REQUESTS
from jacserve.server.worker.protocol import Channel
from jacserve.server.worker.sandbox import SandboxSettings, apply_sandbox
from jacserve.server.worker.settings import WorkerSettings
from jacserve.server.worker.threads import ThreadPolicy
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = ["MAX_ERROR_CHARS", "serve_one_archive"]

_LOG = logging.getLogger("jacserve.worker")
MAX_ERROR_CHARS = 4000
"""Longest error message a worker sends (the frontend cuts there too)."""


def _build(settings: WorkerSettings, compile_after: int, archive: bytes) -> DerivativeHandlers:
    extra = settings.allow_ops
    allowlist = (
        OperatorAllowlist.from_file(settings.op_allowlist, extra)
        if settings.op_allowlist
        else OperatorAllowlist.default(extra)
    )
    registry = ArchiveRegistry(
        archive,
        max_archive_bytes=settings.max_archive_bytes,
        max_loaded_bytes=settings.max_loaded_bytes,
        device=settings.device,
        compile_after=compile_after,
        allowlist=allowlist,
    )
    return DerivativeHandlers(
        registry,
        HandlerSettings(
            max_tensor_elements=settings.max_tensor_elements,
            max_message_bytes=settings.max_message_bytes,
            max_memory_bytes=settings.max_memory_bytes,
            device=settings.device,
            memory_meter=settings.memory_meter,
        ),
    )


def _error(exc: BaseException) -> dict[str, Any]:
    """The reply for a failed operation, with the error's details; its text is cut so
    that the header always fits."""
    if isinstance(exc, errors.JacserveError):
        error, kind, text = exc, type(exc).__name__, str(exc)
    elif isinstance(exc, TensorCodecError):
        error = errors.InvalidArgument(reason=errors.Reason.INVALID_TENSOR, field=exc.field)
        kind, text = "InvalidArgument", str(exc)
    elif is_allocation_failure(exc):  # outside model calls too (loading, encoding)
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        error = errors.ResourceExhausted(reason=errors.Reason.OUT_OF_MEMORY)
        kind, text = (
            "ResourceExhausted",
            "the model ran out of memory in its worker (the per-worker memory limit is "
            "--worker-memory-bytes); use smaller inputs or a memory budget "
            f"(options.max_memory_bytes): {first}",
        )
    else:
        _LOG.exception("request failed unexpectedly")
        error = errors.JacserveError()
        kind, text = "Internal", f"{type(exc).__name__} in the worker"
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 20] + " … (message cut)"
    return errors.error_reply(error, kind, text)


def _answer(handlers: DerivativeHandlers, header: dict[str, Any], payload: bytes | None) -> Any:
    op = header.get("op")
    if op in STREAMING_REQUESTS and payload is not None:
        request = STREAMING_REQUESTS[str(op)].FromString(payload)
        return handlers.stream_jacobian(request, float(header["deadline"]))
    request_type = DERIVATIVE_REQUESTS.get(str(op))
    if request_type is None or payload is None:
        raise errors.InvalidArgument(f"unknown worker operation {str(op)[:80]!r}")
    return handlers.handle(str(op), request_type.FromString(payload), float(header["deadline"]))


def _read_archive(fd: int, limit: int) -> bytes:
    """The archive behind the descriptor the frontend sent (then closed)."""
    with os.fdopen(fd, "rb") as archive:
        data = archive.read(limit + 1)
    if len(data) > limit:
        raise errors.ResourceExhausted(
            f"archive is above the server's limit of {limit} bytes",
            reason=errors.Reason.ARCHIVE_TOO_LARGE,
            limit_bytes=limit,
        )
    return data


def _load(
    channel: Channel, settings: WorkerSettings, compile_after: int, budget: CpuBudget
) -> DerivativeHandlers:
    """Receive the archive, load and check it, and answer with its description.

    Raises:
        EOFError: the frontend went away, or the archive was refused (already answered).
    """
    header, _ = channel.receive(max_payload_bytes=0, accept_file=True)
    if header.get("op") != "load" or "file_fd" not in header:
        raise EOFError(f"expected the archive first; got {str(header.get('op'))[:80]!r}")
    with budget.request():
        try:
            with errors.archive_checks():
                archive = _read_archive(int(header["file_fd"]), settings.max_archive_bytes)
                handlers = _build(settings, compile_after, archive)
                info = handlers.describe()
        except Exception as exc:
            channel.send(_error(exc))
            raise EOFError("the archive was refused") from exc
    channel.send({"ok": True}, info.SerializeToString())
    return handlers


def _serve(
    channel: Channel,
    handlers: DerivativeHandlers,
    settings: WorkerSettings,
    budget: CpuBudget,
    *,
    compiling: bool,
) -> None:
    """Answer requests until the channel closes (a compile worker takes its recipes and
    ``promote`` first), each with the threads :class:`ThreadPolicy` gives it."""
    policy = ThreadPolicy(base=settings.torch_threads, most=settings.max_threads)
    while True:
        try:
            header, payload = channel.receive(max_payload_bytes=settings.max_message_bytes)
        except EOFError:
            return
        if compiling and header.get("op") in ("compile", "promote"):
            channel.send(*_compile_step(handlers, header, payload))
            compiling = header.get("op") == "compile"
            continue
        if isinstance(header.get("unserved"), dict):
            for programs in handlers.compiled_programs():
                programs.ended_elsewhere({str(k): str(v) for k, v in header["unserved"].items()})
        kind = (header.get("op"), len(payload or b""))
        threads = policy.threads(kind, header.get("threads"))
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        started = time.perf_counter()
        with budget.request():
            try:
                answer = _answer(handlers, header, payload)
                if isinstance(answer, Iterator):
                    reply, body = {"ok": True, **_labels(_send_parts(channel, answer))}, None
                else:
                    reply = {"ok": True, **_labels(getattr(answer, "metrics", None))}
                    body = answer.SerializeToString()
                if wanted := report_requests(handlers):
                    reply["compile"] = wanted
            except Exception as exc:
                reply, body = _error(exc), None
        policy.record(kind, seconds=time.perf_counter() - started, threads=threads)
        channel.send(reply, body)


def _compile_step(
    handlers: DerivativeHandlers, header: dict[str, Any], payload: bytes | None
) -> tuple[dict[str, Any], None]:
    """A compile worker's ``compile`` (one recipe) or ``promote`` (start serving)."""
    try:
        if header.get("op") == "promote":
            _LOG.debug("promoted to serve; %s", drop_exec())
            return {"ok": True}, None
        return {
            "ok": True,
            **compile_recipe(handlers, str(header.get("request_op")), payload or b""),
        }, None
    except Exception as exc:
        return _error(exc), None


def _send_parts(channel: Channel, parts: Iterator[Any]) -> Any:
    """Send a stream's parts one message each; returns the metrics part's metrics."""
    metrics = None
    message = next(parts, None)
    while message is not None:
        following = next(parts, None)
        last = following is None
        channel.send({"ok": True, "more": True, "last": last}, message.SerializeToString())
        part = message.WhichOneof("part")
        if part == "metrics":
            metrics = message.metrics
        elif part == "complete":
            metrics = message.complete.metrics
        if not last:  # the arena is shared: write the next part once this one was read
            channel.receive(max_payload_bytes=0)
        message = following
    return metrics


def _labels(metrics: Any) -> dict[str, Any]:
    """Mode and passes of a response, for the frontend's log line and metrics."""
    if metrics is None:
        return {}
    mode = "forward" if metrics.mode == pb.DERIVATIVE_MODE_FORWARD else "reverse"
    return {"mode": mode, "passes": metrics.passes}


def _prefer_as_oom_victim() -> None:
    """Under memory pressure (a container at its limit) the kernel should kill a worker,
    which costs one archive's requests, rather than the frontend, which costs all."""
    # Linux only; raising one's own score needs no privilege
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as score:
        score.write("900")


def _confine(
    settings: WorkerSettings, *, slot: int, own_uid: bool, compiling: bool = False
) -> None:
    gpus = tuple(glob.glob("/dev/nvidia*"))  # requests may pick a GPU (options.device)
    if sys.platform == "linux" and settings.memory_meter == "rss":
        with contextlib.suppress(OSError):
            _measure.open_proc_files()  # before the worker's /proc becomes root's
    applied = apply_sandbox(
        SandboxSettings(
            # CUDA reserves vast address space: no RLIMIT_AS on a machine with GPUs
            memory_bytes=0 if gpus else settings.memory_limit_bytes,
            open_files=settings.open_files,
            scratch_dir=settings.scratch_dir,
            slot=slot,
            own_uid=own_uid,
            allow_exec=compiling,
            device_files=gpus,
        )
    )
    _LOG.debug("sandbox: %s", "; ".join(f"{k}: {v}" for k, v in applied.items()))


def serve_one_archive(
    channel: Channel, settings: WorkerSettings, *, slot: int, own_uid: bool, role: str = "serve"
) -> None:
    """A forked worker's life: confine, say ready, load the archive, serve it.

    Args:
        channel: its connection to the frontend.
        settings: its settings (``scratch_dir`` is its own folder).
        slot: its slot among live workers (its uid, when it gets one).
        own_uid: switch to a uid of its own (root, world-readable Python).
        role: ``serve``, or ``compile`` (build programs from recipes first; the only
            role that may run the C++ toolchain, until it is promoted).
    """
    compiling = role == "compile"
    os.chdir(settings.scratch_dir)
    os.environ.update(
        TMPDIR=settings.scratch_dir,
        TORCHINDUCTOR_CACHE_DIR=os.path.join(settings.scratch_dir, "inductor"),
    )
    tempfile.tempdir = settings.scratch_dir
    torch.set_num_threads(max(1, settings.torch_threads))
    _prefer_as_oom_victim()
    if settings.sandbox:
        _confine(settings, slot=slot, own_uid=own_uid, compiling=compiling)
    budget = CpuBudget(settings.cpu_seconds, background_seconds=float)
    channel.send({"ready": True, "pid": os.getpid()})
    compile_after = 1 if compiling else settings.compile_after if settings.compile == "on" else 0
    try:
        handlers = _load(channel, settings, compile_after, budget)
    except EOFError:
        return
    _serve(channel, handlers, settings, budget, compiling=compiling)
