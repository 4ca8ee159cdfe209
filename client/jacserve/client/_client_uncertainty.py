"""The synchronous client's global and uncertainty calls: derivative-based global
sensitivity (and, beside it, uncertainty propagation and Fisher information)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from jacserve.client._client_transport import _UNSET, Inputs, Model, SyncTransport
from jacserve.client._connection import Metadata
from jacserve.client._global_sensitivity import (
    GlobalSensitivityResult,
    Normal,
    Uniform,
    prepare_global_sensitivity,
)
from jacserve.client._propagation import PropagationResult, prepare_propagate_uncertainty

__all__ = ["UncertaintyCalls"]


class UncertaintyCalls(SyncTransport):
    """:class:`~jacserve.client.Client`'s methods over laws of the inputs."""

    def global_sensitivity(
        self,
        model: Model,
        inputs: Inputs,
        *,
        distribution: Uniform | Normal | Sequence[Uniform | Normal],
        wrt: Sequence[int] | None = None,
        samples: int = 1024,
        seed: int = 0,
        bootstrap: int = 100,
        mode: str = "auto",
        device: str = "",
        method: str = "forward",
        timeout: float | None = _UNSET,
        metadata: Metadata = (),
        compression: grpc.Compression | None = None,
    ) -> GlobalSensitivityResult:
        """Which inputs matter over their whole range: derivative-based global
        sensitivity measures, bounds on Sobol' total-effect indices and active subspaces,
        from exact Jacobians at ``samples`` points of a scrambled Sobol' design (seeded
        by ``seed``), accumulated on the server in one call.

        Args:
            model: as for :meth:`jacobian`.
            inputs: every input; the varied ones (``wrt``, default: every floating
                input) give their shape and dtype, the others stay at these values.
            distribution: the law of each varied input, in ``wrt`` order:
                :class:`Uniform` or :class:`Normal` (one, or a list).
            samples: design points (a power of two keeps Sobol's balance).
            seed: the same seed gives the same points and indices.
            bootstrap: resamples for the eigenvalue intervals (0: none).
            mode: ``"auto"``, ``"forward"`` or ``"reverse"`` for the Jacobians.

        Raises:
            InvalidArgument: a law that does not fit its input (shape, high <= low,
                std <= 0), or ``samples`` out of range.

        >>> import math, torch
        >>> from jacserve.client import Uniform
        >>> def ishigami(x):
        ...     return torch.sin(x[0]) + 7 * torch.sin(x[1]) ** 2 + 0.1 * x[2] ** 4 * torch.sin(x[0])
        >>> r = client.global_sensitivity(ishigami, torch.zeros(3, dtype=torch.float64),
        ...     distribution=Uniform(-math.pi, math.pi), samples=4096)
        >>> [round(v, 1) for v in r.dgsm[0].tolist()]  # closed form 7.72, 24.5, 10.99
        [7.7, 24.5, 11.0]
        >>> bool((r.total_index_bound[0] >= torch.tensor([0.558, 0.442, 0.244])).all())
        True
        """
        prepared = prepare_global_sensitivity(
            inputs, distribution, wrt=wrt, samples=samples, seed=seed, bootstrap=bootstrap,
            mode=mode, device=device,
        )  # fmt: skip
        return self._derive(model, method, prepared, self._options(timeout, metadata, compression))

    def propagate_uncertainty(
        self,
        model: Model,
        inputs: Inputs,
        covariance: Any,
        *,
        wrt: Sequence[int] | None = None,
        device: str = "",
        method: str = "forward",
        timeout: float | None = _UNSET,
        metadata: Metadata = (),
        compression: grpc.Compression | None = None,
    ) -> PropagationResult:
        """The outputs' first-order mean and covariance when the differentiated inputs
        have covariance ``covariance``: J Σ Jᵀ from exact derivatives, on the server.

        The server forms the Jacobian J and J Σ Jᵀ, or, when Σ's rank r is below the
        input and output sizes or there are more outputs than inputs, goes matrix-free:
        r forward-mode passes with the columns of a factor of Σ = F Fᵀ, never forming J
        (``result.method`` says which, ``metrics.mode_reason`` why). ``device``,
        ``method``, ``timeout``, ``metadata`` and ``compression`` are as for
        :meth:`jacobian`.

        Args:
            model: as for :meth:`jacobian`.
            inputs: every input, at its mean; the differentiated ones (``wrt``, default:
                every floating input) vary, the others stay at these values.
            covariance: Σ ``[N, N]`` over the differentiated inputs' elements, flattened
                and concatenated in ``wrt`` order (``result.input_names``): a torch
                tensor or NumPy array, symmetric positive semi-definite (rank-deficient
                is fine).
            wrt: the inputs that vary (argument indices).

        Returns:
            :class:`PropagationResult`: ``.mean`` (the output, in its structure),
            ``.covariance`` ``[M, M]`` and ``.std`` ``[M]`` (float64, over the output's
            elements flattened in order: ``result.output_names``), ``.method``.

        Raises:
            ValueError: a covariance that is not ``[N, N]`` or not finite.
            TypeError: a covariance that is not a real-valued matrix.
            InvalidArgument: a covariance that is not symmetric or not positive
                semi-definite (within a tolerance of its dtype).

        >>> a = torch.tensor([[1.0, 2.0], [0.0, 3.0]], dtype=torch.float64)
        >>> sigma = torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64))
        >>> r = client.propagate_uncertainty(lambda x: a @ x, torch.ones(2, dtype=torch.float64), sigma)
        >>> r.mean.tolist(), r.covariance.tolist(), r.std.tolist()[1], r.method
        ([3.0, 3.0], [[17.0, 24.0], [24.0, 36.0]], 6.0, 'jacobian')
        >>> r = client.propagate_uncertainty(model_id, torch.zeros(3), 0.01 * torch.eye(3))
        >>> r.covariance.shape, r.method
        (torch.Size([2, 2]), 'jacobian')
        """
        prepared = prepare_propagate_uncertainty(inputs, covariance, wrt=wrt, device=device)
        return self._derive(model, method, prepared, self._options(timeout, metadata, compression))
