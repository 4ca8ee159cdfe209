"""Loading archives into callable models with the metadata clients see.

>>> import io, torch
>>> buffer = io.BytesIO()
>>> torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), buffer)
>>> model = load_model(buffer.getvalue(), ArchiveFormat.TORCHSCRIPT)
>>> [m.name for m in model.methods], [p.name for p in model.parameters_info]
(['forward'], ['weight', 'bias'])
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from jacserve._pt2_decoding import fast_schema_decoding
from jacserve.server.engine import DerivativeCache
from jacserve.server.engine.compiled import CompiledPrograms
from jacserve.server.errors import InvalidArgument
from jacserve.server.registry.archive import ArchiveFormat, strip_sample_inputs
from jacserve.server.registry.operators import OperatorAllowlist, value_reads

_LOG = logging.getLogger("jacserve.server.registry")

__all__ = [
    "DERIVATIVE_CACHE_BYTES",
    "InputInfo",
    "LoadedModel",
    "MethodInfo",
    "ParameterInfo",
    "load_model",
]


@dataclass(frozen=True)
class InputInfo:
    """One positional input of a method; dtype and shape are ``None`` where unrecorded."""

    name: str
    dtype: torch.dtype | None = None
    shape: tuple[int, ...] | None = None  # -1 marks a dynamic dimension
    required: bool = True


@dataclass(frozen=True)
class MethodInfo:
    """A callable method and its inputs."""

    name: str
    inputs: tuple[InputInfo, ...]


@dataclass(frozen=True)
class ParameterInfo:
    """A named parameter of the model."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype


DERIVATIVE_CACHE_BYTES = 1 << 20
"""Bytes each loaded model may keep of measured costs, memory profiles and checks."""


class LoadedModel:
    """A loaded archive on one device: its methods, parameters, derivative cache and size.

    ``derivative_cache`` holds what the engine measures about this model per input
    signature (see :class:`~jacserve.server.engine.DerivativeCache`) and
    ``compiled_programs`` its compiled Jacobian programs (at most 8, see
    :class:`~jacserve.server.engine.compiled.CompiledPrograms`); both live and die with
    the loaded model, so eviction or deletion drops them too. ``value_reads`` says where
    the model reads tensor values into Python numbers (such models are never compiled).
    """

    def __init__(
        self,
        fmt: ArchiveFormat,
        module: torch.nn.Module,
        methods: Sequence[MethodInfo],
        device: torch.device,
        cache_bytes: int = DERIVATIVE_CACHE_BYTES,
        warnings: Sequence[str] = (),
        value_reads: Sequence[str] = (),
    ):
        self.format = fmt
        self.warnings = tuple(warnings)
        self.value_reads = tuple(value_reads)
        self.module = module
        self.methods = tuple(methods)
        self.device = device
        self.derivative_cache = DerivativeCache(cache_bytes)
        self.compiled_programs: CompiledPrograms | None = None
        self._graphs: dict[tuple[Any, ...], torch.fx.GraphModule | None] = {}
        self.parameters = {
            name: p for name, p in module.named_parameters() if p.is_floating_point()
        }
        for p in self.parameters.values():
            p.requires_grad_(True)  # set once here; the engine never toggles it
        self.parameters_info = tuple(
            ParameterInfo(name, tuple(p.shape), p.dtype) for name, p in self.parameters.items()
        )
        tensors = [*module.parameters(), *module.buffers()]
        self.nbytes = sum(t.numel() * t.element_size() for t in tensors) + cache_bytes

    def enable_compilation(self, *, compile_after: int) -> None:
        """Let the engine request compiled Jacobian programs of this model.

        A model that reads tensor values into Python numbers (``value_reads``) stays
        eager: a program compiled at one input may not take the path another input takes,
        and its check against one eager Jacobian cannot see that.
        """
        disabled = ""
        if self.value_reads:
            disabled = (
                f"the model reads tensor values into Python numbers ({self.value_reads[0]}), "
                "so it may take another path at other inputs; it runs eagerly"
            )
        self.compiled_programs = CompiledPrograms(
            self._traceable, compile_after=compile_after, disabled=disabled
        )

    def _traceable(self, inputs: Sequence[torch.Tensor]) -> torch.nn.Module:
        """A module torch.compile can trace: the exported program, or TorchScript converted."""
        if self.format is ArchiveFormat.TORCH_EXPORT:
            return self.module
        from torch._export.converter import TS2EPConverter  # experimental; imported on use

        return TS2EPConverter(self.module, tuple(inputs)).convert().module().to(self.device)

    def graph_module(self, inputs: Sequence[torch.Tensor]) -> torch.fx.GraphModule | None:
        """``forward`` as an FX graph over its inputs, for checkpointed reverse mode (see
        ``jacserve.server.engine.checkpointed``): the exported program itself, or
        TorchScript converted once per input signature (``None`` where that fails)."""
        if isinstance(self.module, torch.fx.GraphModule):
            return self.module
        key = tuple((tuple(t.shape), t.dtype) for t in inputs)
        if key not in self._graphs:
            try:
                self._graphs[key] = self._traceable(inputs)  # type: ignore[assignment]
            except Exception as exc:  # the converter is experimental: eager reverse then
                _LOG.warning("TorchScript to FX conversion failed: %s", str(exc)[:300])
                self._graphs[key] = None
        return self._graphs[key]

    def method(self, name: str) -> tuple[Callable[..., Any], MethodInfo]:
        """Return the callable for ``name`` and its description.

        Raises:
            InvalidArgument: when the model has no such method.
        """
        for info in self.methods:
            if info.name == name:
                fn = self.module if name == "forward" else getattr(self.module, name)
                return fn, info
        available = ", ".join(m.name for m in self.methods)
        raise InvalidArgument(f"the model has no method {name!r}; its methods are: {available}")

    def check_inputs(
        self, method: MethodInfo, inputs: Sequence[torch.Tensor], *, batched: bool = False
    ) -> None:
        """Check input count, and dtypes and static shapes where the archive records them.

        With ``batched``, each input's first dimension is the batch and the rest is checked.

        Raises:
            InvalidArgument: naming the first input that does not fit.
        """
        required = sum(1 for i in method.inputs if i.required)
        if not required <= len(inputs) <= len(method.inputs):
            expected = (
                str(required)
                if required == len(method.inputs)
                else f"{required} to {len(method.inputs)}"
            )
            names = ", ".join(i.name for i in method.inputs)
            raise InvalidArgument(
                f"method {method.name!r} takes {expected} inputs ({names}); got {len(inputs)}"
            )
        for index, (spec, tensor) in enumerate(zip(method.inputs, inputs, strict=False)):
            if batched:
                if tensor.dim() == 0:
                    raise InvalidArgument(
                        f"input {index} ({spec.name}): a batched input needs a leading batch "
                        "dimension; got a 0-d tensor"
                    )
                tensor = tensor[0]
            if spec.dtype is not None and tensor.dtype != spec.dtype:
                raise InvalidArgument(
                    f"input {index} ({spec.name}): expected dtype "
                    f"{str(spec.dtype).removeprefix('torch.')}; got "
                    f"{str(tensor.dtype).removeprefix('torch.')}"
                )
            if spec.shape is not None and (
                len(spec.shape) != tensor.dim()
                or any(d not in (-1, s) for d, s in zip(spec.shape, tensor.shape, strict=True))
            ):
                raise InvalidArgument(
                    f"input {index} ({spec.name}): expected shape {list(spec.shape)} "
                    f"(-1 = any size); got {list(tensor.shape)}"
                )


def _torchscript_methods(module: torch.jit.ScriptModule) -> list[MethodInfo]:
    methods = []
    for name in module._c._method_names():
        if name.startswith("__"):
            continue
        arguments = getattr(module, name).schema.arguments[1:]  # drop self
        inputs = tuple(
            InputInfo(name=a.name, required=not a.has_default_value()) for a in arguments
        )
        methods.append(MethodInfo(name, inputs))
    return methods


def _export_methods(program: torch.export.ExportedProgram) -> list[MethodInfo]:
    user_inputs = set(program.graph_signature.user_inputs)
    inputs = []
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        value = node.meta.get("val")
        if isinstance(value, torch.Tensor):
            shape = tuple(d if isinstance(d, int) else -1 for d in value.shape)
            inputs.append(InputInfo(node.name, value.dtype, shape))
        else:
            inputs.append(InputInfo(node.name))
    return [MethodInfo("forward", tuple(inputs))]


def load_model(
    data: bytes,
    fmt: ArchiveFormat,
    device: torch.device | str = "cpu",
    allowlist: OperatorAllowlist | None = None,
) -> LoadedModel:
    """Load an archive of a known format onto ``device`` and check its operators.

    TorchScript modules are put in eval mode; torch.export programs run as exported, and
    load without their pickled sample inputs. ``warnings`` of the result name the
    operators after which derivatives are zero.

    Raises:
        InvalidArgument: when torch cannot load the archive or it calls an operator
            outside ``allowlist`` (default: the built-in list).
    """
    device = torch.device(device)
    allowlist = allowlist or OperatorAllowlist.default()
    try:
        if fmt is ArchiveFormat.TORCHSCRIPT:
            module = torch.jit.load(io.BytesIO(data), map_location=device)
            module.eval()
            methods = _torchscript_methods(module)
        else:
            with fast_schema_decoding():  # see NOTE: [Decoding a .pt2 program]
                program = torch.export.load(io.BytesIO(strip_sample_inputs(data)))
            module, methods = program.module().to(device), _export_methods(program)
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise InvalidArgument(
            f"could not load the archive as {fmt.value}: {type(exc).__name__}: {first_line}. "
            "Re-save it with the same torch version as the server "
            f"({torch.__version__})"
        ) from exc
    warnings = allowlist.check(module)
    return LoadedModel(
        fmt, module, methods, device, warnings=warnings, value_reads=value_reads(module)
    )
