"""Parameter Jacobians and Fisher information a worker answers
(:class:`ParameterHandlers`, a part of the worker's handlers): ``ParameterJacobian`` and
``FisherInformation``."""

from __future__ import annotations

__all__ = ["ParameterHandlers"]


class ParameterHandlers:
    """Mixed into ``DerivativeHandlers``."""
