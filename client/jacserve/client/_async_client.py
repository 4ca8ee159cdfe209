"""The asyncio jacserve client: :class:`Client`'s methods as coroutines over grpc.aio."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio

from jacserve.client._analysis import (
    SensitivityResult,
    SingularResult,
    prepare_sensitivity,
    prepare_sparse_jacobian,
    prepare_top_singular,
)
from jacserve.client._archive import ModelSource, archive_bytes
from jacserve.client._async_parameters import AsyncParameterCalls
from jacserve.client._async_uncertainty import AsyncUncertaintyCalls
from jacserve.client._calls import (
    Prepared,
    SliceCallback,
    jacobian_key,
    prepare_gradients,
    prepare_hessian,
    prepare_hvp,
    prepare_jacobian,
    prepare_jvp,
    prepare_stream_jacobian,
    prepare_vjp,
    result_bytes,
    upload_chunks,
)
from jacserve.client._connection import MODEL_ID, UNSET, CallOptions, ClientBase, Metadata
from jacserve.client._results import (
    GradientsResult,
    HessianResult,
    HvpResult,
    JacobianResult,
    JvpResult,
    ModelInfo,
    VjpResult,
)
from jacserve.client._sharding import pass_window_plan
from jacserve.client.errors import DeadlineExceeded, NotFound, Unavailable, from_rpc_error
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = ["AsyncClient"]

_UNSET: Any = UNSET
_T = TypeVar("_T")


class AsyncClient(AsyncParameterCalls, AsyncUncertaintyCalls, ClientBase):
    """An asyncio connection to a jacserve server; the same methods as
    :class:`~jacserve.client.Client`, each a coroutine, and the same arguments, results
    and exceptions.

    >>> import asyncio
    >>> async def main():
    ...     async with AsyncClient(target, timeout=30) as c:
    ...         r = await c.jacobian(torch.jit.script(torch.nn.Linear(3, 2)), torch.randn(3))
    ...         return r.jacobian.shape
    >>> asyncio.run(main())
    torch.Size([2, 3])
    """

    _grpc = grpc.aio

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channels; the client cannot be used afterwards."""
        for channel in self._channels:
            await channel.close()

    async def _call(
        self,
        rpc: str,
        request: Any,
        opts: CallOptions,
        *,
        streaming: bool = False,
        replica: int | None = None,
    ) -> Any:
        """As :meth:`Client._call`: retries inside one deadline, taking turns over several
        targets; a ``streaming`` call is returned as (its first message, the call) once
        that message has arrived."""
        deadline = None if opts.timeout is None else time.monotonic() + opts.timeout
        index = self._take_turn() if replica is None else replica
        attempt = 0
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                call = getattr(self._stubs[index], rpc)(
                    request() if callable(request) else request,
                    timeout=remaining,
                    metadata=opts.metadata,
                    compression=opts.compression,
                )
                if not streaming:
                    return await call
                return await call.read(), call
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
            size = self._unlabelled_size_refusal(error, request)
            if size is not None:
                if self._server_limit is None:
                    await self._learn_server_limit(index, opts, deadline)
                error = self._labelled_refusal(error, size)
            if replica is not None:
                raise error
            wait, index = self._after_failure(error, attempt, deadline, index)
            attempt += 1
            await asyncio.sleep(wait)

    async def _learn_server_limit(
        self, index: int, opts: CallOptions, deadline: float | None
    ) -> None:
        """As :meth:`Client._learn_server_limit`: one try at the server's message limit."""
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            info = await self._stubs[index].GetServerInfo(
                pb.GetServerInfoRequest(), timeout=remaining, metadata=opts.metadata
            )
        except grpc.RpcError:
            return
        self._server_limit = info.max_message_bytes

    async def _derive(
        self, model: ModelSource, method: str, prepared: Prepared[_T], opts: CallOptions
    ) -> _T:
        async def call(ref: pb.FunctionRef) -> _T:
            prepared.function.CopyFrom(ref)
            if not prepared.streaming:
                return prepared.parse(await self._call(prepared.rpc, prepared.request, opts))
            message, stream = await self._call(prepared.rpc, prepared.request, opts, streaming=True)
            assembler = prepared.parse(None)
            try:
                while message is not grpc.aio.EOF:
                    assembler.feed(message)
                    message = await stream.read()
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from None
            return assembler.result()

        return await self._with_model(model, method, call, opts, prepared.example)

    async def _with_model(
        self,
        model: ModelSource,
        method: str,
        call: Callable[[pb.FunctionRef], Awaitable[_T]],
        opts: CallOptions,
        example: Sequence[Any] = (),
    ) -> _T:
        is_id = isinstance(model, str) and MODEL_ID.fullmatch(model) is not None
        model_id = model if is_id else await self._upload(model, example or None, opts)
        try:
            return await call(pb.FunctionRef(model_id=model_id, method=method))
        except NotFound:
            if is_id:
                raise
            self._known_ids.discard(model_id)
            model_id = await self._upload(model, example or None, opts)
            return await call(pb.FunctionRef(model_id=model_id, method=method))

    async def upload(
        self,
        model: ModelSource,
        *,
        example_inputs: Sequence[Any] | None = None,
        timeout: float | None = _UNSET,
        metadata: Metadata = (),
        compression: grpc.Compression | None = None,
    ) -> str:
        """As :meth:`Client.upload`."""
        opts = self._options(timeout, metadata, compression)
        return await self._upload(model, example_inputs, opts)

    async def _upload(
        self, model: ModelSource, example: Sequence[Any] | None, opts: CallOptions
    ) -> str:
        data = archive_bytes(model, example)
        model_id = hashlib.sha256(data).hexdigest()
        if model_id in self._known_ids:
            return model_id
        if len(self._stubs) == 1:
            await self._upload_to(None, data, model_id, opts)
        else:  # every replica that answers, as Client.upload
            results = await asyncio.gather(
                *(self._upload_to(i, data, model_id, opts) for i in range(len(self._stubs))),
                return_exceptions=True,
            )
            failures = [r for r in results if isinstance(r, BaseException)]
            for failure in failures:
                if not isinstance(failure, Unavailable | DeadlineExceeded):
                    raise failure
            if len(failures) == len(self._stubs):
                raise failures[-1]
        self._known_ids.add(model_id)
        return model_id

    async def _upload_to(
        self, replica: int | None, data: bytes, model_id: str, opts: CallOptions
    ) -> None:
        request = pb.GetModelRequest(model_id=model_id)
        try:
            await self._call("GetModel", request, opts, replica=replica)
        except NotFound:
            chunks = upload_chunks(data, self._settings.upload_chunk_bytes)
            await self._call("UploadModel", chunks, opts, replica=replica)

    async def get_model(
        self, model_id: str, *, timeout: float | None = _UNSET, metadata: Metadata = (),
        compression: grpc.Compression | None = None,
    ) -> ModelInfo:  # fmt: skip
        """As :meth:`Client.get_model`."""
        response = await self._call(
            "GetModel",
            pb.GetModelRequest(model_id=model_id),
            self._options(timeout, metadata, compression),
        )
        return ModelInfo.from_wire(response.model)

    async def list_models(
        self, *, timeout: float | None = _UNSET, metadata: Metadata = (),
        compression: grpc.Compression | None = None,
    ) -> list[ModelInfo]:  # fmt: skip
        """As :meth:`Client.list_models`."""
        response = await self._call(
            "ListModels", pb.ListModelsRequest(), self._options(timeout, metadata, compression)
        )
        return [ModelInfo.from_wire(m) for m in response.models]

    async def delete_model(
        self, model_id: str, *, timeout: float | None = _UNSET, metadata: Metadata = (),
        compression: grpc.Compression | None = None,
    ) -> None:  # fmt: skip
        """As :meth:`Client.delete_model`."""
        await self._call(
            "DeleteModel",
            pb.DeleteModelRequest(model_id=model_id),
            self._options(timeout, metadata, compression),
        )
        self._known_ids.discard(model_id)

    async def jvp(
        self, model: ModelSource, primals: Any, tangents: Any, *,
        wrt: Sequence[int] | None = None, batched: bool = False, device: str = "",
        method: str = "forward", timeout: float | None = _UNSET, verify: int | bool = 0,
        metadata: Metadata = (), compression: grpc.Compression | None = None,
    ) -> JvpResult:  # fmt: skip
        """As :meth:`Client.jvp`."""
        prepared = prepare_jvp(primals, tangents, wrt=wrt, batched=batched, device=device,
                               verify=verify)  # fmt: skip
        return await self._derive(
            model, method, prepared, self._options(timeout, metadata, compression)
        )

    async def vjp(
        self, model: ModelSource, primals: Any, cotangents: Any, *,
        wrt: Sequence[int] | None = None, batched: bool = False, device: str = "",
        method: str = "forward", timeout: float | None = _UNSET, verify: int | bool = 0,
        metadata: Metadata = (), compression: grpc.Compression | None = None,
    ) -> VjpResult:  # fmt: skip
        """As :meth:`Client.vjp`."""
        prepared = prepare_vjp(primals, cotangents, wrt=wrt, batched=batched, device=device,
                               verify=verify)  # fmt: skip
        return await self._derive(
            model, method, prepared, self._options(timeout, metadata, compression)
        )

    async def jacobian(
        self, model: ModelSource, inputs: Any, *, mode: str = "auto",
        wrt: Sequence[int] | str | None = None, batched: bool = False, max_memory_bytes: int = 0,
        chunk_size: int = 0, device: str = "", method: str = "forward",
        timeout: float | None = _UNSET, stream: bool | None = None, progress: bool | None = None,
        on_slice: SliceCallback | None = None, max_block_bytes: int = 0, verify: int | bool = 0,
        sparsity: Any = None, probes: int = 0, shards: int | None = None,
        metadata: Metadata = (), compression: grpc.Compression | None = None,
        parameters: Sequence[str] | None = None,
    ) -> Any:  # fmt: skip
        """As :meth:`Client.jacobian`."""
        opts = self._options(timeout, metadata, compression)
        if isinstance(wrt, str) and wrt != "parameters":
            raise ValueError(f"wrt: expected input indices or 'parameters'; got {wrt!r}")
        if isinstance(wrt, str) or parameters is not None:
            return await self.parameter_jacobian(model, inputs, parameters=parameters, mode=mode,
                device=device, method=method, timeout=timeout, metadata=metadata,
                compression=compression)  # fmt: skip
        if sparsity is not None:
            if batched or verify or on_slice is not None:
                raise ValueError("sparsity: not with batched, verify or on_slice")
            sparse = prepare_sparse_jacobian(inputs, sparsity, wrt=wrt, mode=mode, probes=probes,
                                             device=device)  # fmt: skip
            return await self._derive(model, method, sparse, opts)
        options = dict(mode=mode, wrt=wrt, batched=batched, max_memory_bytes=max_memory_bytes,
                       chunk_size=chunk_size, device=device, verify=verify)  # fmt: skip
        lanes = self._lanes(shards)
        key = jacobian_key(model, method, inputs, wrt, batched)
        if lanes > 1 and not batched and on_slice is None and not verify and key not in self._whole:
            unary = prepare_jacobian(inputs, **options)
            inputs_tuple = unary.inputs

            async def split(ref: pb.FunctionRef) -> JacobianResult | None:
                return await self._sharded(unary, ref, lanes, opts, inputs_tuple,
                                           always=shards is not None)  # fmt: skip

            result = await self._with_model(model, method, split, opts, unary.example)
            if result is not None:
                return result
            self._whole.add(key)
        if stream is None:
            stream = self._needs_stream(key)
            if stream is None:
                info = await self._call("GetServerInfo", pb.GetServerInfoRequest(), opts)
                self._server_limit = info.max_message_bytes
                stream = self._needs_stream(key)
        prepared = (
            prepare_stream_jacobian(
                inputs,
                **options,
                max_block_bytes=max_block_bytes,
                progress=progress,
                on_slice=on_slice,
            )
            if stream or on_slice is not None
            else prepare_jacobian(inputs, **options)
        )
        result = await self._derive(model, method, prepared, opts)
        self._remember(key, result_bytes(result))
        return result

    async def _sharded(
        self, prepared: Prepared[JacobianResult], ref: pb.FunctionRef, lanes: int,
        opts: CallOptions, inputs_tuple: Any, *, always: bool,
    ) -> JacobianResult | None:  # fmt: skip
        """As ``Client._sharded``: the lanes run in a thread, each window's call on this
        event loop."""
        prepared.function.CopyFrom(ref)
        deadline = None if opts.timeout is None else time.monotonic() + opts.timeout
        plan_request = pass_window_plan(prepared.request)
        plan = await self._call("Jacobian", plan_request, opts)
        if self._server_limit is None:
            info = await self._call("GetServerInfo", pb.GetServerInfoRequest(), opts)
            self._server_limit = info.max_message_bytes
        loop = asyncio.get_running_loop()

        def call(replica: int, request: pb.JacobianRequest, remaining: float | None) -> Any:
            pinned = replica if len(self._stubs) > 1 else None
            window = self._call("Jacobian", request, opts.with_timeout(remaining), replica=pinned)
            return asyncio.run_coroutine_threadsafe(window, loop).result()

        sharded = self._splitter(plan, lanes, always, call)
        if sharded is None:
            return None
        return await asyncio.to_thread(sharded.run, plan_request, plan, inputs_tuple, deadline)

    async def parameter_gradients(
        self, model: ModelSource, inputs: Any, cotangent: Any | None = None, *,
        parameters: Sequence[str] | None = None, device: str = "", method: str = "forward",
        timeout: float | None = _UNSET, verify: int | bool = 0,
        metadata: Metadata = (), compression: grpc.Compression | None = None,
    ) -> GradientsResult:  # fmt: skip
        """As :meth:`Client.parameter_gradients`."""
        prepared = prepare_gradients(inputs, cotangent, parameters=parameters, device=device,
                                     verify=verify)  # fmt: skip
        return await self._derive(
            model, method, prepared, self._options(timeout, metadata, compression)
        )

    async def hvp(
        self, model: ModelSource, inputs: Any, vectors: Any, *,
        wrt: Sequence[int] | None = None, batched: bool = False, gauss_newton: bool = False,
        device: str = "", method: str = "forward", timeout: float | None = _UNSET,
        metadata: Metadata = (), compression: grpc.Compression | None = None,
    ) -> HvpResult:  # fmt: skip
        """As :meth:`Client.hvp`."""
        prepared = prepare_hvp(inputs, vectors, wrt=wrt, batched=batched,
                               gauss_newton=gauss_newton, device=device)  # fmt: skip
        return await self._derive(
            model, method, prepared, self._options(timeout, metadata, compression)
        )

    async def hessian(
        self, model: ModelSource, inputs: Any, *, wrt: Sequence[int] | None = None,
        chunk_size: int = 0, device: str = "", method: str = "forward",
        timeout: float | None = _UNSET,
        metadata: Metadata = (), compression: grpc.Compression | None = None,
    ) -> HessianResult:  # fmt: skip
        """As :meth:`Client.hessian`."""
        prepared = prepare_hessian(inputs, wrt=wrt, chunk_size=chunk_size, device=device)
        return await self._derive(
            model, method, prepared, self._options(timeout, metadata, compression)
        )

    async def sensitivity(
        self, model: ModelSource, inputs: Any, *, wrt: Sequence[int] | None = None,
        mode: str = "auto", top_k: int = 10, device: str = "", method: str = "forward",
        timeout: float | None = _UNSET,
        metadata: Metadata = (), compression: grpc.Compression | None = None,
    ) -> SensitivityResult:  # fmt: skip
        """As :meth:`Client.sensitivity`."""
        prepared = prepare_sensitivity(inputs, wrt=wrt, mode=mode, top_k=top_k, device=device)
        return await self._derive(
            model, method, prepared, self._options(timeout, metadata, compression)
        )

    async def top_singular(
        self, model: ModelSource, inputs: Any, k: int, *, wrt: Sequence[int] | None = None,
        steps: int = 0, device: str = "", method: str = "forward",
        timeout: float | None = _UNSET,
        metadata: Metadata = (), compression: grpc.Compression | None = None,
    ) -> SingularResult:  # fmt: skip
        """As :meth:`Client.top_singular`."""
        prepared = prepare_top_singular(inputs, k, wrt=wrt, steps=steps, device=device)
        return await self._derive(
            model, method, prepared, self._options(timeout, metadata, compression)
        )
