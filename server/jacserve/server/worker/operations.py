"""The derivative RPCs a worker serves, by name, with their request types (no torch here:
the frontend imports this)."""

from __future__ import annotations

from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = ["DERIVATIVE_REQUESTS", "STREAMING_REQUESTS"]

DERIVATIVE_REQUESTS: dict[str, type] = {
    "Jvp": pb.JvpRequest,
    "Vjp": pb.VjpRequest,
    "Jacobian": pb.JacobianRequest,
    "ParameterGradients": pb.ParameterGradientsRequest,
    "Hvp": pb.HvpRequest,
    "Hessian": pb.HessianRequest,
    "Sensitivity": pb.SensitivityRequest,
    "TopSingular": pb.TopSingularRequest,
    "SparseJacobian": pb.SparseJacobianRequest,
    "GlobalSensitivity": pb.GlobalSensitivityRequest,
    "PropagateUncertainty": pb.PropagateUncertaintyRequest,
    "ParameterJacobian": pb.ParameterJacobianRequest,
    "FisherInformation": pb.FisherInformationRequest,
}
"""The derivative RPCs a worker serves, by method name, with their request types."""

STREAMING_REQUESTS: dict[str, type] = {"StreamJacobian": pb.StreamJacobianRequest}
"""The RPCs a worker answers with a stream of messages."""
