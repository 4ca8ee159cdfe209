"""The operator allowlist: the committed list, its denied classes, and what it reports."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch

from jacserve.server.errors import InvalidArgument
from jacserve.server.registry.operators import (
    DEFAULT_ALLOWLIST_PATH,
    OperatorAllowlist,
    value_reads,
)

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts/gen_allowlist.py"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_allowlist", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_regenerating_reproduces_the_committed_list():
    committed = [
        line
        for line in DEFAULT_ALLOWLIST_PATH.read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert committed == _generator().allowed()


def test_every_denied_class_matches_a_registered_operator():
    generator = _generator()
    names = {s.name.partition("::")[2] for s in torch._C._jit_get_all_schemas()}
    names |= {"Print", "fork", "wait"}  # node kinds without a schema
    unused = [
        what
        for what, (pattern, _) in generator.DENIED.items()
        if not any(generator.re.search(pattern, name) for name in names)
    ]
    assert unused == []


@pytest.mark.parametrize(
    "operator",
    ["aten::item", "aten::Int.Tensor", "aten::Bool.Tensor", "aten::__getitem__.t", "aten::warn"],
)
def test_ordinary_value_operators_are_allowed(operator):
    assert operator in OperatorAllowlist.default()


@pytest.mark.parametrize(
    "operator",
    [
        "aten::from_file",
        "prim::Print",
        "prim::fork",
        "aten::empty.memory_format",
        "aten::set_.source_Tensor",
        "aten::_unsafe_view",
        "aten::_reshape_alias",
        "aten::_sparse_coo_tensor_unsafe",
        "aten::sparse_coo_tensor.indices",
        "aten::_sparse_compressed_tensor_with_dims",
        "aten::_nested_view_from_buffer",
        "aten::_nested_view_from_jagged",
        "aten::_make_per_tensor_quantized_tensor",
        "aten::_make_per_channel_quantized_tensor",
        "aten::max_pool2d_with_indices_backward",
        "aten::segment_reduce",
    ],
)
def test_io_process_and_memory_unsafe_operators_are_refused(operator):
    assert operator not in OperatorAllowlist.default()


def test_checked_constructors_that_transformer_encoder_uses_stay_allowed():
    allowlist = OperatorAllowlist.default()
    assert "aten::_nested_tensor_from_mask" in allowlist
    assert "aten::as_strided" in allowlist  # checked against the storage


class _SizeAndValue(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(int(x.size(0)), -1) * float(x.sum())


def test_value_reads_count_values_but_not_traced_sizes():
    traced = torch.jit.trace(_SizeAndValue(), torch.ones(2, 3))
    assert value_reads(traced) == ()  # tracing froze the float; the size is no value read
    assert value_reads(torch.jit.script(_SizeAndValue())) == ("aten::Float.Tensor (in forward)",)


class _Data(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x.data


def test_data_is_reported_as_cutting_the_derivative():
    (warning,) = OperatorAllowlist.default().check(torch.jit.script(_Data()))
    assert ".data" in warning and "zero" in warning


def test_extra_operators_allow_a_refused_model():
    class Prints(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            print(x)
            return x

    scripted = torch.jit.script(Prints())
    with pytest.raises(InvalidArgument, match=r"--allow-ops prim::Print$"):
        OperatorAllowlist.default().check(scripted)
    assert OperatorAllowlist.default(["prim::Print"]).check(scripted) == ()
