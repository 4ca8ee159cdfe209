"""A worker's description of its archive as a ``jacserve.v1.ModelInfo`` message: methods,
their inputs (with what the archive records of each), parameters.

>>> declared_input_types.__name__
'declared_input_types'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jacserve.codec import dtype_to_wire
from jacserve.server.registry import MethodInfo, ModelInfo
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = ["declared_input_types", "model_info_to_wire"]

_FORMAT_TO_WIRE = {
    "torchscript": pb.MODEL_FORMAT_TORCHSCRIPT,
    "torch_export": pb.MODEL_FORMAT_TORCH_EXPORT,
}


def model_info_to_wire(
    info: ModelInfo, types: Mapping[str, Sequence[str]] | None = None
) -> pb.ModelInfo:
    """Convert registry metadata to its message; ``types`` gives each method's declared
    input types (see :func:`declared_input_types`), else a tensor input of known dtype is
    ``"Tensor"`` and any other input's type is left empty (unknown)."""
    types = types or {}

    def declared(method: MethodInfo, index: int, known_dtype: bool) -> str:
        names = types.get(method.name, ())
        if index < len(names):
            return names[index]
        return "Tensor" if known_dtype else ""

    methods = [
        pb.MethodInfo(
            name=m.name,
            inputs=[
                pb.InputInfo(
                    name=i.name,
                    dtype=dtype_to_wire(i.dtype) if i.dtype is not None else pb.DTYPE_UNSPECIFIED,
                    shape=list(i.shape or ()),
                    has_shape=i.shape is not None,
                    type=declared(m, index, i.dtype is not None),
                )
                for index, i in enumerate(m.inputs)
            ],
        )
        for m in info.methods
    ]
    parameters = [
        pb.ParameterInfo(name=p.name, shape=list(p.shape), dtype=dtype_to_wire(p.dtype))
        for p in info.parameters
    ]
    return pb.ModelInfo(
        model_id=info.model_id,
        format=_FORMAT_TO_WIRE[info.format.value],
        archive_size_bytes=info.archive_size_bytes,
        methods=methods,
        parameters=parameters,
    )


def declared_input_types(module: Any) -> dict[str, tuple[str, ...]]:
    """The TorchScript type of each input (``self`` left out) of each method of a scripted
    module, as its schema spells it: ``"Tensor"``, ``"Tuple[Tensor, Tensor]"`` …

    TorchScript archives record these, never dtypes or shapes.
    """
    types = {}
    for name in module._c._method_names():
        if not name.startswith("__"):
            arguments = getattr(module, name).schema.arguments[1:]
            types[name] = tuple(a.type.annotation_str for a in arguments)
    return types
