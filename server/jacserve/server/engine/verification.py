"""Checking a derivative against float64 central finite differences.

An answer from automatic differentiation is only as right as the derivative rules of
the ops in the model; a model with unusual ops (custom autograd, data-dependent
control flow, in-place tricks, ops whose rules torch gets wrong: see the cdist finding
in ``_passes``) deserves an independent check. For a direction ``v`` over the
differentiated inputs,

    (f(x + h·v) − f(x − h·v)) / 2h  ≈  J·v      (error O(h²) + O(ε/h))

computed on a float64 copy of the model (``h = ε^(1/3)·max(1, ‖x‖∞)`` ≈ 6e-6, the step
that balances truncation against rounding), compared with what the derivative says
along ``v``. The relative error is ``‖fd − ad‖ / max(‖fd‖, ‖ad‖)`` per direction.
Models that cannot run in float64 (dtypes fixed inside the graph) are checked in their
own precision, with that step, and the result says so.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from jacserve.server.engine._run import MODEL_CALLS

__all__ = [
    "MAX_DIRECTIONS",
    "Verification",
    "central_differences",
    "parameter_differences",
    "random_directions",
]

MAX_DIRECTIONS = 16
Wrap = Callable[[Callable[..., Any]], Callable[..., Any]] | None
_TINY = 1e-300


@dataclass(frozen=True)
class Verification:
    """How well a derivative agrees with central finite differences.

    ``relative_errors`` has one entry per direction; ``precision`` is ``"float64"`` or
    the dtype the model had to run in; ``step`` is h.
    """

    relative_errors: tuple[float, ...]
    precision: str
    step: float

    @property
    def max_relative_error(self) -> float:
        """The largest relative error (0 when no direction was checked)."""
        return max(self.relative_errors, default=0.0)


def random_directions(
    inputs: Sequence[torch.Tensor], count: int, seed: int = 0
) -> list[tuple[torch.Tensor, ...]]:
    """``count`` random unit directions over ``inputs`` (Gaussian, norm 1 jointly),
    reproducible from ``seed``, in float64 on the CPU.

    >>> [d[0].shape for d in random_directions([torch.zeros(3)], 2)]
    [torch.Size([3]), torch.Size([3])]
    """
    generator = torch.Generator().manual_seed(seed)
    directions = []
    for _ in range(count):
        parts = [torch.randn(t.shape, generator=generator, dtype=torch.float64) for t in inputs]
        norm = math.sqrt(sum(float(p.square().sum()) for p in parts)) or 1.0
        directions.append(tuple(p / norm for p in parts))
    return directions


def _float64_copy(module: torch.nn.Module) -> torch.nn.Module | None:
    try:
        return copy.deepcopy(module).double()
    except Exception:  # a module that cannot be copied or cast: checked in its own dtype
        return None


def central_differences(
    module: torch.nn.Module,
    method: str,
    inputs: Sequence[torch.Tensor],
    wrt: Sequence[int],
    checks: Sequence[tuple[tuple[torch.Tensor, ...], torch.Tensor]],
    *,
    project: Callable[[torch.Tensor], torch.Tensor] | None = None,
    wrap: Wrap = None,
) -> Verification:
    """Compare what a derivative says along directions ``v`` with central differences of
    the model along ``v``.

    Args:
        module: the loaded model (not modified: a float64 copy is made).
        method: the method that was differentiated.
        inputs: the point.
        wrt: indices of the differentiated inputs; ``directions`` run over these.
        checks: pairs ``(v, expected)``: a unit direction over the ``wrt`` inputs (see
            :func:`random_directions`) and what the derivative says along it, the
            flattened, concatenated ``J·v`` over all outputs (or, with ``project``, the
            projected quantity).
        project: maps the flattened difference quotient to the quantity ``expected``
            holds; for a VJP with cotangent ``u``, ``lambda fd: u @ fd`` (``u·J·v``).
        wrap: turns the copy's method into what the derivative differentiated (for a
            model with nested inputs or outputs: a function of the flat leaves returning
            its output's leaves).

    >>> lin = torch.nn.Linear(2, 1).double()
    >>> x = torch.ones(2, dtype=torch.float64)
    >>> (v,) = random_directions([x], 1)
    >>> ok = central_differences(lin, "forward", [x], [0], [(v, lin.weight @ v[0])])
    >>> ok.max_relative_error < 1e-8, ok.precision
    (True, 'float64')
    """
    copy64 = _float64_copy(module)
    precision = "float64"
    model, cast = copy64, torch.float64
    if copy64 is not None:
        try:
            _evaluate(copy64, method, inputs, wrt, torch.float64, wrap)
        except Exception:
            copy64 = None
    if copy64 is None:
        model, cast = module, inputs[wrt[0]].dtype
        precision = str(cast).removeprefix("torch.")
    scale = max([1.0, *(float(inputs[j].detach().abs().max()) for j in wrt if inputs[j].numel())])
    step = torch.finfo(cast).eps ** (1 / 3) * scale
    errors = []
    for direction, expected in checks:
        plus = _evaluate(model, method, _shifted(inputs, wrt, direction, step), wrt, cast, wrap)
        minus = _evaluate(model, method, _shifted(inputs, wrt, direction, -step), wrt, cast, wrap)
        quotient = ((plus - minus) / (2 * step)).double()
        if project is not None:
            quotient = project(quotient).reshape(-1)
        derivative = expected.detach().double().reshape(-1).cpu()
        errors.append(_relative_error(quotient, derivative))
    return Verification(tuple(errors), precision, step)


def parameter_differences(
    module: torch.nn.Module,
    method: str,
    inputs: Sequence[torch.Tensor],
    names: Sequence[str],
    checks: Sequence[tuple[tuple[torch.Tensor, ...], torch.Tensor]],
    project: Callable[[torch.Tensor], torch.Tensor],
    wrap: Wrap = None,
) -> Verification:
    """As :func:`central_differences`, along directions over the parameters ``names``
    (moved in place on a float64 copy), for parameter gradients: ``expected`` is the
    gradient dotted with ``v`` and ``project`` maps the outputs' difference quotient to
    ``u · fd``.

    >>> lin = torch.nn.Linear(2, 1).double()
    >>> x = torch.ones(2, dtype=torch.float64)
    >>> (v,) = random_directions([lin.weight], 1)
    >>> check = parameter_differences(lin, "forward", [x], ["weight"],
    ...                               [(v, (x * v[0]).sum())], lambda fd: fd.sum())
    >>> check.max_relative_error < 1e-8
    True
    """
    model, precision = _float64_copy(module), "float64"
    if model is None:
        model, precision = copy.deepcopy(module), "model dtype"
    parameters = dict(model.named_parameters())
    missing = [n for n in names if n not in parameters]
    if missing:
        raise ValueError(f"parameters {missing[:5]} not found on the model's copy")
    chosen = [parameters[n] for n in names]
    dtype = chosen[0].dtype if chosen else torch.float64
    floating = [j for j, t in enumerate(inputs) if t.is_floating_point()]
    scale = max([1.0, *(float(p.detach().abs().max()) for p in chosen if p.numel())])
    step = torch.finfo(dtype).eps ** (1 / 3) * scale
    errors = []
    for direction, expected in checks:
        quotients = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for parameter, part in zip(chosen, direction, strict=True):
                    parameter.add_(sign * step * part.to(parameter.device, parameter.dtype))
            quotients.append(_evaluate(model, method, inputs, floating, dtype, wrap))
            with torch.no_grad():
                for parameter, part in zip(chosen, direction, strict=True):
                    parameter.sub_(sign * step * part.to(parameter.device, parameter.dtype))
        fd = project((quotients[0] - quotients[1]) / (2 * step)).reshape(-1)
        ad = expected.detach().double().reshape(-1).cpu()
        errors.append(_relative_error(fd, ad))
    label = precision if precision == "float64" else str(dtype).removeprefix("torch.")
    return Verification(tuple(errors), label, step)


def _relative_error(fd: torch.Tensor, ad: torch.Tensor) -> float:
    """``‖fd − ad‖ / max(‖fd‖, ‖ad‖)``, 0 when they are equal (zeros included)."""
    difference = float((fd - ad).norm())
    return difference / max(float(fd.norm()), float(ad.norm()), _TINY) if difference else 0.0


def _shifted(
    inputs: Sequence[torch.Tensor],
    wrt: Sequence[int],
    direction: tuple[torch.Tensor, ...],
    step: float,
) -> list[torch.Tensor]:
    moved = list(inputs)
    for j, part in zip(wrt, direction, strict=True):
        moved[j] = inputs[j].double() + step * part.to(inputs[j].device)
    return moved


def _evaluate(
    model: torch.nn.Module,
    method: str,
    inputs: Sequence[torch.Tensor],
    wrt: Sequence[int],
    dtype: torch.dtype,
    wrap: Wrap = None,
) -> torch.Tensor:
    """The model's outputs at ``inputs`` (wrt inputs cast to ``dtype``), flattened and
    concatenated, on the CPU."""
    call = model if method == "forward" else getattr(model, method)
    call = wrap(call) if wrap is not None else call
    args = [t.to(dtype) if j in wrt else t for j, t in enumerate(inputs)]
    with MODEL_CALLS.shared(), torch.no_grad():
        outputs = call(*args)
    outputs = outputs if isinstance(outputs, tuple | list) else (outputs,)
    return torch.cat([o.detach().reshape(-1).double().cpu() for o in outputs])
