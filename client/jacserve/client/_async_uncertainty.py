"""The asyncio client's global and uncertainty calls (as :mod:`._client_uncertainty`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from jacserve.client._archive import ModelSource
from jacserve.client._connection import UNSET, Metadata
from jacserve.client._global_sensitivity import (
    GlobalSensitivityResult,
    Normal,
    Uniform,
    prepare_global_sensitivity,
)
from jacserve.client._propagation import PropagationResult, prepare_propagate_uncertainty

__all__ = ["AsyncUncertaintyCalls"]

_UNSET: Any = UNSET


class AsyncUncertaintyCalls:
    """Mixed into :class:`~jacserve.client.AsyncClient`: uses its ``_derive`` and
    ``_options``."""

    _derive: Any
    _options: Any

    async def global_sensitivity(
        self, model: ModelSource, inputs: Any, *,
        distribution: Uniform | Normal | Sequence[Uniform | Normal],
        wrt: Sequence[int] | None = None, samples: int = 1024, seed: int = 0,
        bootstrap: int = 100, mode: str = "auto", device: str = "", method: str = "forward",
        timeout: float | None = _UNSET, metadata: Metadata = (),
        compression: grpc.Compression | None = None,
    ) -> GlobalSensitivityResult:  # fmt: skip
        """As :meth:`Client.global_sensitivity`."""
        prepared = prepare_global_sensitivity(
            inputs, distribution, wrt=wrt, samples=samples, seed=seed, bootstrap=bootstrap,
            mode=mode, device=device,
        )  # fmt: skip
        return await self._derive(
            model, method, prepared, self._options(timeout, metadata, compression)
        )

    async def propagate_uncertainty(
        self, model: ModelSource, inputs: Any, covariance: Any, *,
        wrt: Sequence[int] | None = None, device: str = "", method: str = "forward",
        timeout: float | None = _UNSET, metadata: Metadata = (),
        compression: grpc.Compression | None = None,
    ) -> PropagationResult:  # fmt: skip
        """As :meth:`Client.propagate_uncertainty`."""
        prepared = prepare_propagate_uncertainty(inputs, covariance, wrt=wrt, device=device)
        return await self._derive(
            model, method, prepared, self._options(timeout, metadata, compression)
        )
