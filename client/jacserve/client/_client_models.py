"""The synchronous client's model calls: upload (once, to every replica), get, list,
delete.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import grpc

from jacserve.client._archive import ModelSource, archive_bytes
from jacserve.client._calls import upload_chunks
from jacserve.client._client_transport import _UNSET, Model, SyncTransport
from jacserve.client._connection import CallOptions, Metadata
from jacserve.client._results import ModelInfo
from jacserve.client.errors import DeadlineExceeded, NotFound, Unavailable
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = ["ModelCalls"]


class ModelCalls(SyncTransport):
    """:class:`~jacserve.client.Client`'s methods that manage models."""

    def upload(
        self,
        model: ModelSource,
        *,
        example_inputs: Sequence[Any] | None = None,
        timeout: float | None = _UNSET,
        metadata: Metadata = (),
        compression: grpc.Compression | None = None,
    ) -> str:
        """Upload a model archive (once) and return its id, the SHA-256 of its bytes.

        Args:
            model: a path to an archive, its bytes, a ``torch.jit.ScriptModule``, a
                ``torch.export.ExportedProgram``, or a plain ``nn.Module`` or function of
                tensors (exported with torch.export, else scripted, else traced, using
                ``example_inputs``; serialized once per code, weights and input shapes).
            example_inputs: inputs for exporting a plain module or function. Derivative
                calls given a module or function use their own inputs.
            timeout: deadline in seconds for this call (default: the client's).
            metadata: gRPC metadata for this call, after the client's.
            compression: a ``grpc.Compression`` for this call (default: the client's).

        Returns:
            The model id (64 lowercase hex characters). Archives the server already
            has are not sent again.

        Raises:
            InvalidArgument: the server cannot load the archive (the message says why).
            ResourceExhausted: the archive is above the server's size limit.
            TypeError: ``model`` is none of the accepted types.
            ValueError: a module or function that cannot be exported, scripted or traced
                (the message names each failure).

        >>> model_id = client.upload(torch.jit.script(torch.nn.Linear(3, 2)))
        >>> len(model_id)
        64
        """
        return self._upload(model, example_inputs, self._options(timeout, metadata, compression))

    def _upload(self, model: Model, example: Sequence[Any] | None, opts: CallOptions) -> str:
        data = archive_bytes(model, example)
        model_id = hashlib.sha256(data).hexdigest()
        with self._lock:
            if model_id in self._known_ids:
                return model_id
        if len(self._stubs) == 1:
            self._upload_to(None, data, model_id, opts)
        else:  # every replica that answers; windows on one that did not move elsewhere
            failures = []
            for replica in range(len(self._stubs)):
                try:
                    self._upload_to(replica, data, model_id, opts)
                except (Unavailable, DeadlineExceeded) as exc:
                    failures.append(exc)
            if len(failures) == len(self._stubs):
                raise failures[-1]
        with self._lock:
            self._known_ids.add(model_id)
        return model_id

    def _upload_to(
        self, replica: int | None, data: bytes, model_id: str, opts: CallOptions
    ) -> None:
        try:
            self._call("GetModel", pb.GetModelRequest(model_id=model_id), opts, replica=replica)
        except NotFound:
            chunks = upload_chunks(data, self._settings.upload_chunk_bytes)
            self._call("UploadModel", chunks, opts, replica=replica)

    def get_model(
        self,
        model_id: str,
        *,
        timeout: float | None = _UNSET,
        metadata: Metadata = (),
        compression: grpc.Compression | None = None,
    ) -> ModelInfo:
        """Metadata of a model: format, methods and their inputs, parameters.

        Raises:
            NotFound: unknown id. InvalidArgument: malformed id.

        >>> info = client.get_model(model_id)
        >>> info.format, [(p.name, p.shape) for p in info.parameters]
        ('torchscript', [('weight', (2, 3)), ('bias', (2,))])
        """
        response = self._call(
            "GetModel",
            pb.GetModelRequest(model_id=model_id),
            self._options(timeout, metadata, compression),
        )
        return ModelInfo.from_wire(response.model)

    def list_models(
        self,
        *,
        timeout: float | None = _UNSET,
        metadata: Metadata = (),
        compression: grpc.Compression | None = None,
    ) -> list[ModelInfo]:
        """Metadata of every model on the server.

        >>> model_id in [m.model_id for m in client.list_models()]
        True
        """
        response = self._call(
            "ListModels", pb.ListModelsRequest(), self._options(timeout, metadata, compression)
        )
        return [ModelInfo.from_wire(m) for m in response.models]

    def delete_model(
        self,
        model_id: str,
        *,
        timeout: float | None = _UNSET,
        metadata: Metadata = (),
        compression: grpc.Compression | None = None,
    ) -> None:
        """Remove a model from the server.

        Raises:
            NotFound: unknown id.

        >>> scratch = client.upload(torch.jit.script(torch.nn.Linear(2, 2)))
        >>> client.delete_model(scratch)
        >>> scratch in [m.model_id for m in client.list_models()]
        False
        """
        self._call(
            "DeleteModel",
            pb.DeleteModelRequest(model_id=model_id),
            self._options(timeout, metadata, compression),
        )
        with self._lock:
            self._known_ids.discard(model_id)
