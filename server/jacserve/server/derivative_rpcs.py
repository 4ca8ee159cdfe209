"""The derivative RPCs of the frontend (:class:`DerivativeRpcs`, a part of
:class:`~jacserve.server.service.JacobianServicer`): resolve the model, hand the
serialized request to a worker of that model, and pass the worker's serialized answer
back unparsed (streamed slice by slice for StreamJacobian). A request runs in a worker
of its model *and* its caller's tenant."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from jacserve.server.errors import DeadlineExceeded, InvalidArgument
from jacserve.server.rpc import Observed, rpc
from jacserve.server.worker.pool import LoadFailure
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = ["DerivativeRpcs"]


class DerivativeRpcs:
    """Mixed into ``JacobianServicer``: uses its ``_pool``, ``_metrics``, ``register``,
    ``info``, ``_refused``, ``_deadline``, ``_capped`` and ``_cancelled``."""

    _pool: Any
    _metrics: Any
    register: Any
    info: Any
    _refused: Any
    _deadline: Any
    _capped: Any
    _cancelled: Any

    def _resolve(self, ref: pb.FunctionRef, context: Any) -> None:
        """Make ``ref`` name a stored, described model (storing an inline archive)."""
        source = ref.WhichOneof("source")
        if source == "archive":
            model_id = self.register(ref.archive, context)[0].model_id
            ref.model_id = model_id  # the worker loads it from the store
        elif source == "model_id":
            self.info(ref.model_id, context)
        else:
            raise InvalidArgument(
                "function: expected model_id (from UploadModel) or an inline archive; got neither",
                field="function",
            )

    def _call(self, model_id: str, call: Callable[[], Any]) -> Any:
        """Run a pool call; an archive whose loader fails now is quarantined."""
        try:
            return call()
        except LoadFailure as failure:
            raise self._refused(model_id, failure, checked=True) from None

    def _derive(self, name: str, request: Any, context: Any, observed: Observed) -> bytes:
        ref = request.function
        explain = self._capped(context)
        try:
            self._resolve(ref, context)  # (loading a model counts against the call's time)
            reply, body = self._call(
                ref.model_id,
                lambda: self._pool.call(
                    {"op": name, "model_id": ref.model_id, "tenant": observed.tenant},
                    request.SerializeToString(),
                    deadline=self._deadline(context),
                    cancelled=self._cancelled(context),
                ),
            )
        except DeadlineExceeded:
            explain()
            raise
        observed.report(reply)
        return body or b""

    @rpc("Jvp")
    def Jvp(self, request: pb.JvpRequest, context: Any, observed: Observed) -> bytes:
        return self._derive("Jvp", request, context, observed)

    @rpc("Vjp")
    def Vjp(self, request: pb.VjpRequest, context: Any, observed: Observed) -> bytes:
        return self._derive("Vjp", request, context, observed)

    @rpc("Jacobian")
    def Jacobian(self, request: pb.JacobianRequest, context: Any, observed: Observed) -> bytes:
        return self._derive("Jacobian", request, context, observed)

    @rpc("ParameterGradients")
    def ParameterGradients(
        self, request: pb.ParameterGradientsRequest, context: Any, observed: Observed
    ) -> bytes:
        return self._derive("ParameterGradients", request, context, observed)

    @rpc("Hvp")
    def Hvp(self, request: pb.HvpRequest, context: Any, observed: Observed) -> bytes:
        return self._derive("Hvp", request, context, observed)

    @rpc("Hessian")
    def Hessian(self, request: pb.HessianRequest, context: Any, observed: Observed) -> bytes:
        return self._derive("Hessian", request, context, observed)

    @rpc("Sensitivity")
    def Sensitivity(
        self, request: pb.SensitivityRequest, context: Any, observed: Observed
    ) -> bytes:
        return self._derive("Sensitivity", request, context, observed)

    @rpc("TopSingular")
    def TopSingular(
        self, request: pb.TopSingularRequest, context: Any, observed: Observed
    ) -> bytes:
        return self._derive("TopSingular", request, context, observed)

    @rpc("SparseJacobian")
    def SparseJacobian(
        self, request: pb.SparseJacobianRequest, context: Any, observed: Observed
    ) -> bytes:
        return self._derive("SparseJacobian", request, context, observed)

    @rpc("GlobalSensitivity")
    def GlobalSensitivity(
        self, request: pb.GlobalSensitivityRequest, context: Any, observed: Observed
    ) -> bytes:
        return self._derive("GlobalSensitivity", request, context, observed)

    @rpc("PropagateUncertainty")
    def PropagateUncertainty(
        self, request: pb.PropagateUncertaintyRequest, context: Any, observed: Observed
    ) -> bytes:
        return self._derive("PropagateUncertainty", request, context, observed)

    @rpc("ParameterJacobian")
    def ParameterJacobian(
        self, request: pb.ParameterJacobianRequest, context: Any, observed: Observed
    ) -> bytes:
        return self._derive("ParameterJacobian", request, context, observed)

    @rpc("FisherInformation")
    def FisherInformation(
        self, request: pb.FisherInformationRequest, context: Any, observed: Observed
    ) -> bytes:
        return self._derive("FisherInformation", request, context, observed)

    @rpc("StreamJacobian")
    def StreamJacobian(
        self, request: pb.StreamJacobianRequest, context: Any, observed: Observed
    ) -> Iterator[bytes]:
        summary: dict[str, Any] = {}
        explain = self._capped(context)
        try:
            self._resolve(request.request.function, context)
            model_id = request.request.function.model_id
            parts = self._pool.stream(
                {"op": "StreamJacobian", "model_id": model_id, "tenant": observed.tenant},
                request.SerializeToString(),
                deadline=self._deadline(context),
                cancelled=self._cancelled(context),
                summary=summary,
            )
            first = self._call(model_id, lambda: next(parts, None))
            if first is not None:
                yield first
                yield from parts
        except DeadlineExceeded:
            explain()
            raise
        observed.report(summary)
