"""Derivative modes on the wire and in the engine.

>>> mode_from_wire(pb.DERIVATIVE_MODE_UNSPECIFIED), MODE_TO_WIRE["reverse"] == pb.DERIVATIVE_MODE_REVERSE
('auto', True)
"""

from __future__ import annotations

from jacserve.server.errors import InvalidArgument
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = ["MODE_TO_WIRE", "mode_from_wire"]

_MODE_FROM_WIRE = {
    pb.DERIVATIVE_MODE_UNSPECIFIED: "auto",
    pb.DERIVATIVE_MODE_AUTO: "auto",
    pb.DERIVATIVE_MODE_FORWARD: "forward",
    pb.DERIVATIVE_MODE_REVERSE: "reverse",
}
MODE_TO_WIRE = {"forward": pb.DERIVATIVE_MODE_FORWARD, "reverse": pb.DERIVATIVE_MODE_REVERSE}


def mode_from_wire(value: int) -> str:
    """The engine's name of a wire ``DerivativeMode`` (unspecified: auto).

    Raises:
        InvalidArgument: not a known mode.
    """
    mode = _MODE_FROM_WIRE.get(value)
    if mode is None:
        raise InvalidArgument(f"mode: expected AUTO, FORWARD or REVERSE; got {value}", field="mode")
    return mode
