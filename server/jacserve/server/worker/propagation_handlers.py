"""Uncertainty propagation a worker answers (:class:`PropagationHandlers`, a part of the
worker's handlers): ``PropagateUncertainty``."""

from __future__ import annotations

__all__ = ["PropagationHandlers"]


class PropagationHandlers:
    """Mixed into ``DerivativeHandlers``."""
