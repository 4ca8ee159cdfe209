"""The asyncio client's calls over a model's parameters (as :mod:`._client_parameters`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from jacserve.client._archive import ModelSource
from jacserve.client._connection import UNSET, Metadata
from jacserve.client._fisher import (
    FisherResult,
    ParameterJacobianResult,
    prepare_fisher_information,
    prepare_parameter_jacobian,
    warn_if_singular,
)

__all__ = ["AsyncParameterCalls"]

_UNSET: Any = UNSET


class AsyncParameterCalls:
    """Mixed into :class:`~jacserve.client.AsyncClient`: uses its ``_derive`` and
    ``_options``."""

    _derive: Any
    _options: Any

    async def parameter_jacobian(
        self, model: ModelSource, inputs: Any, *, parameters: Sequence[str] | None = None,
        mode: str = "auto", device: str = "", method: str = "forward",
        timeout: float | None = _UNSET, metadata: Metadata = (),
        compression: grpc.Compression | None = None,
    ) -> ParameterJacobianResult:  # fmt: skip
        """As :meth:`Client.parameter_jacobian`."""
        prepared = prepare_parameter_jacobian(
            inputs, parameters=parameters, mode=mode, device=device
        )
        return await self._derive(
            model, method, prepared, self._options(timeout, metadata, compression)
        )

    async def fisher_information(
        self, model: ModelSource, inputs: Any, *, noise_std: float = 1.0,
        noise_covariance: Any = None, parameters: Sequence[str] | None = None,
        wrt: Sequence[int] | None = None, device: str = "", method: str = "forward",
        timeout: float | None = _UNSET, metadata: Metadata = (),
        compression: grpc.Compression | None = None,
    ) -> FisherResult:  # fmt: skip
        """As :meth:`Client.fisher_information` (a ``RuntimeWarning`` when F is not
        invertible)."""
        prepared = prepare_fisher_information(
            inputs, noise_std=noise_std, noise_covariance=noise_covariance,
            parameters=parameters, wrt=wrt, device=device,
        )  # fmt: skip
        result = await self._derive(
            model, method, prepared, self._options(timeout, metadata, compression)
        )
        return warn_if_singular(result)
