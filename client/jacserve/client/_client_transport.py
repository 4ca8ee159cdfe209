"""How the synchronous client makes a call: retries inside one deadline over the
replicas, the model resolved to an id (uploaded, and uploaded again once if the server
lost it), a streamed response assembled.

The public methods are :class:`~jacserve.client.Client`'s, in ``_client_models``,
``_client_derivatives`` and ``_client_second_order``; the connection they share with the
async client is ``_connection``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc

from jacserve.client._archive import ModelSource
from jacserve.client._calls import Prepared
from jacserve.client._connection import MODEL_ID, UNSET, CallOptions, ClientBase
from jacserve.client.errors import NotFound, from_rpc_error
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = ["Inputs", "Model", "SyncTransport"]

_UNSET: Any = UNSET
_T = TypeVar("_T")

Model = ModelSource  # an id (64 hex characters) or anything upload() takes
Inputs = Any  # a tensor / ndarray, or a tuple or list of them (one per model input)


class SyncTransport(ClientBase):
    """:class:`ClientBase` with blocking calls (``grpc``); ``_upload`` comes from
    ``_client_models.ModelCalls``."""

    def _upload(self, model: Model, example: Sequence[Any] | None, opts: CallOptions) -> str:
        raise NotImplementedError  # ModelCalls

    def _call(
        self,
        rpc: str,
        request: Any,
        opts: CallOptions,
        *,
        streaming: bool = False,
        replica: int | None = None,
    ) -> Any:
        """Call ``rpc`` with retries (see :class:`RetryPolicy`) inside the deadline of
        ``opts``, with its metadata and compression.

        ``request`` is a message, or a factory of a request stream (made anew per try).
        A ``streaming`` response is returned as an iterator whose first message has
        arrived (so that failing to reach the server is retried too). With several
        targets, calls take turns and a retry goes to the next replica at once (a wait
        only after every replica failed); a ``replica`` given pins one try to it.
        """
        deadline = None if opts.timeout is None else time.monotonic() + opts.timeout
        index = self._take_turn() if replica is None else replica
        attempt = 0
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                response = getattr(self._stubs[index], rpc)(
                    request() if callable(request) else request,
                    timeout=remaining,
                    metadata=opts.metadata,
                    compression=opts.compression,
                )
                if not streaming:
                    return response
                return itertools.chain([next(response)], response)
            except StopIteration:
                return iter(())
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
            size = self._unlabelled_size_refusal(error, request)
            if size is not None:
                if self._server_limit is None:
                    self._learn_server_limit(index, opts, deadline)
                error = self._labelled_refusal(error, size)
            if replica is not None:
                raise error
            wait, index = self._after_failure(error, attempt, deadline, index)
            attempt += 1
            time.sleep(wait)

    def _learn_server_limit(self, index: int, opts: CallOptions, deadline: float | None) -> None:
        """Ask replica ``index`` for its message limit (one try; unknown if it fails)."""
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            info = self._stubs[index].GetServerInfo(
                pb.GetServerInfoRequest(), timeout=remaining, metadata=opts.metadata
            )
        except grpc.RpcError:
            return
        self._server_limit = info.max_message_bytes

    def _with_model(
        self,
        model: Model,
        method: str,
        call: Callable[[pb.FunctionRef], _T],
        opts: CallOptions,
        example: Sequence[Any] = (),
    ) -> _T:
        """Run ``call`` on a FunctionRef; re-upload once if the server lost an uploaded model."""
        is_id = isinstance(model, str) and MODEL_ID.fullmatch(model) is not None
        model_id = model if is_id else self._upload(model, example or None, opts)
        try:
            return call(pb.FunctionRef(model_id=model_id, method=method))
        except NotFound:
            if is_id:
                raise
            with self._lock:
                self._known_ids.discard(model_id)
            model_id = self._upload(model, example or None, opts)
            return call(pb.FunctionRef(model_id=model_id, method=method))

    def _derive(self, model: Model, method: str, prepared: Prepared[_T], opts: CallOptions) -> _T:
        def call(ref: pb.FunctionRef) -> _T:
            prepared.function.CopyFrom(ref)
            if not prepared.streaming:
                return prepared.parse(self._call(prepared.rpc, prepared.request, opts))
            messages = self._call(prepared.rpc, prepared.request, opts, streaming=True)
            assembler = prepared.parse(None)
            try:
                for message in messages:
                    assembler.feed(message)
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from None
            return assembler.result()

        return self._with_model(model, method, call, opts, prepared.example)
