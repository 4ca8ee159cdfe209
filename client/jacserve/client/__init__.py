"""The jacserve Python SDK: upload PyTorch programs and get their derivatives over gRPC.

>>> from jacserve.client import Client
>>> Client.__name__
'Client'
"""

from jacserve.client._analysis import RankedInput, SensitivityResult, SingularResult
from jacserve.client._async_client import AsyncClient
from jacserve.client._client import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_TARGET, Client
from jacserve.client._fisher import FisherResult, ParameterJacobianResult, ParameterSlice
from jacserve.client._global_sensitivity import (
    ActiveSubspace,
    GlobalSensitivityResult,
    Normal,
    Uniform,
)
from jacserve.client._propagation import PropagationResult
from jacserve.client._results import (
    DerivativeMetrics,
    FiniteDifferenceCheck,
    GradientsResult,
    HessianResult,
    HvpResult,
    InputInfo,
    JacobianResult,
    JvpResult,
    MethodInfo,
    ModelInfo,
    ParameterInfo,
    VjpResult,
)
from jacserve.client._retry import RetryPolicy
from jacserve.client._sharding import ShardReport
from jacserve.client.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    JacserveError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_TARGET",
    "ActiveSubspace",
    "AsyncClient",
    "Client",
    "DeadlineExceeded",
    "DerivativeMetrics",
    "FailedPrecondition",
    "FiniteDifferenceCheck",
    "FisherResult",
    "GlobalSensitivityResult",
    "GradientsResult",
    "HessianResult",
    "HvpResult",
    "InputInfo",
    "Internal",
    "InvalidArgument",
    "JacobianResult",
    "JacserveError",
    "JvpResult",
    "MethodInfo",
    "ModelInfo",
    "Normal",
    "NotFound",
    "ParameterInfo",
    "ParameterJacobianResult",
    "ParameterSlice",
    "PermissionDenied",
    "PropagationResult",
    "RankedInput",
    "ResourceExhausted",
    "RetryPolicy",
    "SensitivityResult",
    "ShardReport",
    "SingularResult",
    "Unauthenticated",
    "Unavailable",
    "Uniform",
    "VjpResult",
]
