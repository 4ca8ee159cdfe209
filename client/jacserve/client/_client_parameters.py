"""The synchronous client's calls over a model's parameters: Jacobians with respect to
its named parameters and Fisher information (parameter identifiability)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from jacserve.client._client_transport import _UNSET, Inputs, Model, SyncTransport
from jacserve.client._connection import Metadata
from jacserve.client._fisher import (
    FisherResult,
    ParameterJacobianResult,
    prepare_fisher_information,
    prepare_parameter_jacobian,
    warn_if_singular,
)

__all__ = ["ParameterCalls"]


class ParameterCalls(SyncTransport):
    """:class:`~jacserve.client.Client`'s methods over the model's parameters."""

    def parameter_jacobian(
        self,
        model: Model,
        inputs: Inputs,
        *,
        parameters: Sequence[str] | None = None,
        mode: str = "auto",
        device: str = "",
        method: str = "forward",
        timeout: float | None = _UNSET,
        metadata: Metadata = (),
        compression: grpc.Compression | None = None,
    ) -> ParameterJacobianResult:
        """The Jacobian of the outputs at ``inputs`` with respect to the model's named
        parameters (TorchScript and torch.export archives alike); also
        ``jacobian(model, inputs, wrt="parameters")``.

        Args:
            model: as for :meth:`jacobian`.
            inputs: every input (held fixed).
            parameters: parameter names (as in :attr:`ModelInfo.parameters`); default
                every floating-point parameter.
            mode: ``"auto"`` (fewer passes: forward when the parameters have many times
                fewer elements than the outputs), ``"forward"`` or ``"reverse"``.

        Returns:
            :class:`ParameterJacobianResult`: ``jacobian[name]`` of shape
            ``output.shape + parameter.shape`` (for a method returning several
            tensors, the output's structure with such a dict per output tensor).

        Raises:
            InvalidArgument: an unknown parameter name (the message lists the model's
                parameters) or a parameter that is not floating-point.

        >>> linear = torch.nn.Linear(3, 2).double()
        >>> x = torch.ones(3, dtype=torch.float64)
        >>> r = client.jacobian(torch.jit.script(linear), x, wrt="parameters")
        >>> {name: tuple(block.shape) for name, block in r.jacobian.items()}
        {'weight': (2, 2, 3), 'bias': (2, 2)}
        >>> r.jacobian["bias"]  # ∂y/∂b = I
        tensor([[1., 0.],
                [0., 1.]], dtype=torch.float64)
        """
        prepared = prepare_parameter_jacobian(
            inputs, parameters=parameters, mode=mode, device=device
        )
        return self._derive(model, method, prepared, self._options(timeout, metadata, compression))

    def fisher_information(
        self,
        model: Model,
        inputs: Inputs,
        *,
        noise_std: float = 1.0,
        noise_covariance: Any = None,
        parameters: Sequence[str] | None = None,
        wrt: Sequence[int] | None = None,
        device: str = "",
        method: str = "forward",
        timeout: float | None = _UNSET,
        metadata: Metadata = (),
        compression: grpc.Compression | None = None,
    ) -> FisherResult:
        """Fisher information F = Jᵀ Σ⁻¹ J of the parameters, for outputs observed with
        Gaussian noise of covariance Σ: which parameters (or combinations of them) the
        data can identify, and the standard errors they could at best be estimated with.

        Args:
            model: as for :meth:`jacobian`.
            inputs: every input (for a regression, the design: a batch of rows).
            noise_std: Σ = noise_std² I (independent noise on every output element).
            noise_covariance: ``[M, M]`` symmetric positive definite Σ over the M
                flattened output elements; overrides ``noise_std``.
            parameters: parameter names; default every floating-point parameter.
            wrt: input indices to take the information about instead of parameters.

        Returns:
            :class:`FisherResult`; when F is not invertible (smallest eigenvalue at most
            1e-12 × the largest) its standard errors are NaN and a ``RuntimeWarning``
            says which parameters are unidentifiable.

        Raises:
            ValueError: ``noise_std`` not > 0, or both ``parameters`` and ``wrt``.
            InvalidArgument: an unknown parameter, or a ``noise_covariance`` that is not
                ``[M, M]``, symmetric and positive definite.

        Linear regression y = X θ + ε, ε ~ N(0, σ² I): F = XᵀX / σ².

        >>> X = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> regression = torch.nn.Linear(2, 1, bias=False).double()
        >>> r = client.fisher_information(torch.jit.script(regression), X, noise_std=0.5)
        >>> r.matrix
        tensor([[12., 12.],
                [12., 20.]], dtype=torch.float64)
        >>> r.names[0], r.invertible
        (ParameterSlice(name='weight', start=0, stop=2, shape=(1, 2)), True)
        >>> [round(e, 4) for e in r.standard_errors.tolist()]
        [0.4564, 0.3536]
        """
        prepared = prepare_fisher_information(
            inputs, noise_std=noise_std, noise_covariance=noise_covariance,
            parameters=parameters, wrt=wrt, device=device,
        )  # fmt: skip
        result = self._derive(
            model, method, prepared, self._options(timeout, metadata, compression)
        )
        return warn_if_singular(result)
