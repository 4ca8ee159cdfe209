"""The synchronous client's second-order and analysis calls: Hessian-vector products,
Hessians, sensitivities, top singular values.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from jacserve.client._analysis import (
    SensitivityResult,
    SingularResult,
    prepare_sensitivity,
    prepare_top_singular,
)
from jacserve.client._calls import prepare_hessian, prepare_hvp
from jacserve.client._client_transport import _UNSET, Inputs, Model, SyncTransport
from jacserve.client._connection import Metadata
from jacserve.client._results import HessianResult, HvpResult

__all__ = ["SecondOrderCalls"]


class SecondOrderCalls(SyncTransport):
    """:class:`~jacserve.client.Client`'s second-order and analysis methods."""

    # -- second order ---------------------------------------------------------------------

    def hvp(
        self,
        model: Model,
        inputs: Inputs,
        vectors: Inputs,
        *,
        wrt: Sequence[int] | None = None,
        batched: bool = False,
        gauss_newton: bool = False,
        device: str = "",
        method: str = "forward",
        timeout: float | None = _UNSET,
        metadata: Metadata = (),
        compression: grpc.Compression | None = None,
    ) -> HvpResult:
        """Hessian-vector product ``H·v`` of a scalar function (forward-over-reverse: one
        JVP of the gradient, about three evaluations whatever the input size).

        Args:
            model: a model id, or anything :meth:`upload` takes.
            inputs: the point: a tensor or a tuple (one per model input).
            vectors: one per differentiated input, shaped like it.
            wrt: indices of the inputs to differentiate; default every floating input.
            batched: each vector has a leading dimension k; k products in one call.
            gauss_newton: ``Jᵀ·(J·v)`` instead (the Gauss–Newton matrix; for any output
                shape, no second derivatives).
            device: where to compute; default the server's.
            method: the model method to call.
            timeout: deadline in seconds for this call.
            metadata: gRPC metadata for this call, after the client's.
            compression: a ``grpc.Compression`` for this call (default: the client's).

        Raises:
            InvalidArgument: the output is not a scalar (without ``gauss_newton``), or the
                vectors do not match the differentiated inputs.

        >>> f = lambda x: (x**3).sum()  # H = diag(6x)
        >>> client.hvp(f, torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0])).hvp
        tensor([ 6., 12.])
        """
        prepared = prepare_hvp(
            inputs, vectors, wrt=wrt, batched=batched, gauss_newton=gauss_newton, device=device
        )
        return self._derive(model, method, prepared, self._options(timeout, metadata, compression))

    def hessian(
        self,
        model: Model,
        inputs: Inputs,
        *,
        wrt: Sequence[int] | None = None,
        chunk_size: int = 0,
        device: str = "",
        method: str = "forward",
        timeout: float | None = _UNSET,
        metadata: Metadata = (),
        compression: grpc.Compression | None = None,
    ) -> HessianResult:
        """The full Hessian of a scalar function: n Hessian-vector products over the
        basis, vectorized (``chunk_size`` caps products per call).

        Returns:
            :class:`HessianResult`, structured like ``torch.autograd.functional.hessian``.

        Raises:
            InvalidArgument: the output is not a scalar. ResourceExhausted: n² above the
                server's element limit (ask for products instead).

        >>> f = lambda x: (x[0] * x[1]) ** 2
        >>> client.hessian(f, torch.tensor([1.0, 2.0])).hessian
        tensor([[8., 8.],
                [8., 2.]])
        """
        prepared = prepare_hessian(inputs, wrt=wrt, chunk_size=chunk_size, device=device)
        return self._derive(model, method, prepared, self._options(timeout, metadata, compression))

    # -- analysis -------------------------------------------------------------------------

    def sensitivity(
        self,
        model: Model,
        inputs: Inputs,
        *,
        wrt: Sequence[int] | None = None,
        mode: str = "auto",
        top_k: int = 10,
        device: str = "",
        method: str = "forward",
        timeout: float | None = _UNSET,
        metadata: Metadata = (),
        compression: grpc.Compression | None = None,
    ) -> SensitivityResult:
        """Normalized sensitivities in one call: elasticities ``(x_j / y_i)·∂y_i/∂x_j``,
        norms per input and per output element, and the ``top_k`` inputs by elasticity.

        >>> r = client.sensitivity(lambda x: x[0] * x[1] ** 2, torch.tensor([2.0, 3.0]))
        >>> r.elasticities  # y = x0·x1²: elasticities 1 and 2
        tensor([[1., 2.]], dtype=torch.float64)
        >>> ranked = [(t.element, round(t.score, 3)) for t in r.top_inputs]
        >>> ranked == [(1, 2.0), (0, 1.0)]  # x1 first: score 2
        True
        """
        prepared = prepare_sensitivity(inputs, wrt=wrt, mode=mode, top_k=top_k, device=device)
        return self._derive(model, method, prepared, self._options(timeout, metadata, compression))

    def top_singular(
        self,
        model: Model,
        inputs: Inputs,
        k: int,
        *,
        wrt: Sequence[int] | None = None,
        steps: int = 0,
        device: str = "",
        method: str = "forward",
        timeout: float | None = _UNSET,
        metadata: Metadata = (),
        compression: grpc.Compression | None = None,
    ) -> SingularResult:
        """The ``k`` largest singular values of the Jacobian and their directions, without
        forming it (Lanczos bidiagonalization: ``steps`` JVPs and VJPs, default
        ``min(n, m, max(2k + 20, 40))``), with residuals that say how converged each is.

        >>> import torch
        >>> a = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
        >>> r = client.top_singular(lambda x: a @ x, torch.ones(3), k=2)
        >>> [round(v, 4) for v in r.values.tolist()], bool(r.residuals.max() < 1e-5)
        ([3.0, 2.0], True)
        """
        prepared = prepare_top_singular(inputs, k, wrt=wrt, steps=steps, device=device)
        return self._derive(model, method, prepared, self._options(timeout, metadata, compression))
