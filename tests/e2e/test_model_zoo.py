"""Ordinary models, scripted and traced, served with default settings (no --allow-ops).

Each architecture from ``tests/zoo.py`` is uploaded through the real client, and its
Jacobian must equal ``torch.func.jacrev`` of the same module computed here. Then the
other side of the allowlist: I/O and memory-unsafe constructors are refused at upload,
every offending operator named at once, and the server keeps serving.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import pytest
import torch
from torch.func import jacrev

from conftest import running_server
from jacserve.client import Client, InvalidArgument
from tests import zoo

warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)

TOLERANCE = 1e-8


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def _compile(model: torch.nn.Module, x: torch.Tensor, how: str) -> torch.jit.ScriptModule:
    if how == "script":
        return torch.jit.script(model)
    return torch.jit.trace(model, (x,), check_trace=False)


def _architectures() -> dict[str, Callable[[], tuple[torch.nn.Module, torch.Tensor]]]:
    sequences = zoo.sequence_models
    return {
        "resnet18": zoo.resnet18,
        "mobilenet_v3_small": zoo.mobilenet_v3_small,
        "bn_cnn": zoo.bn_cnn,
        "lstm": lambda: sequences()["lstm"],
        "gru": lambda: sequences()["gru"],
        "transformer_encoder": lambda: sequences()["transformer"],
    }


ARCHITECTURES = _architectures()


@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("name", list(ARCHITECTURES))  # resnet18, mobilenet: ~1 s each
def test_ordinary_model_jacobian_equals_jacrev(client: Client, name: str, how: str) -> None:
    model, x = ARCHITECTURES[name]()
    result = client.jacobian(_compile(model, x, how), x)
    assert _relative_error(result.jacobian, jacrev(model)(x)) <= TOLERANCE


def test_traced_gpt2_jacobian_equals_jacrev(client: Client) -> None:
    pytest.importorskip("transformers")
    model, x = zoo.gpt2()
    result = client.jacobian(torch.jit.trace(model, (x,), check_trace=False), x)
    assert _relative_error(result.jacobian, jacrev(model)(x)) <= TOLERANCE


POSITIVE = torch.tensor([0.3, 0.2, 0.1], dtype=torch.float64)  # tanh branch, 1 step
NEGATIVE = torch.tensor([-0.7, 0.2, -0.9], dtype=torch.float64)  # square branch, 2 steps


@pytest.mark.parametrize("mode", ["reverse", "forward"])
@pytest.mark.parametrize("x", [POSITIVE, NEGATIVE], ids=["positive", "negative"])
def test_data_dependent_branches_take_the_input_path(
    client: Client, x: torch.Tensor, mode: str
) -> None:
    model = zoo.Branches().double()
    result = client.jacobian(torch.jit.script(model), x, mode=mode)
    assert _relative_error(result.jacobian, jacrev(model)(x)) <= TOLERANCE


def test_data_dependent_batch_falls_back_to_points_and_says_so(client: Client) -> None:
    model = zoo.Branches().double()
    points = torch.stack([POSITIVE, NEGATIVE])
    result = client.jacobian(torch.jit.script(model), points, batched=True)
    want = torch.stack([jacrev(model)(p) for p in points])
    assert _relative_error(result.jacobian, want) <= TOLERANCE
    assert not result.metrics.vectorized
    reason = result.metrics.fallback_reason
    assert "computed each point separately" in reason and "TorchScript interpreter" not in reason
    assert any("vectorized over points" in w for w in result.metrics.warnings)


@pytest.fixture(scope="module")
def compiling() -> Iterator[Client]:
    """A server that compiles after the first eager Jacobian of a signature."""
    with (
        running_server(workers=1, compile="on", compile_after=1) as server,
        Client(server.target, timeout=120) as c,
    ):
        yield c


def test_data_dependent_model_is_never_compiled(compiling: Client) -> None:
    model = zoo.Branches().double()
    model_id = compiling.upload(torch.jit.script(model))
    for x in (POSITIVE, POSITIVE, NEGATIVE, POSITIVE):
        result = compiling.jacobian(model_id, x)
        assert _relative_error(result.jacobian, jacrev(model)(x)) <= TOLERANCE
        assert result.metrics.execution_path == "eager"
        assert result.metrics.compilation.startswith("off: the model reads tensor values")
        assert "aten::Bool.Tensor" in result.metrics.compilation


class _SparseCoo(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = torch.tensor([[0, 1]])
        return x + torch.ops.aten._sparse_coo_tensor_unsafe(i, x[:2], [3]).to_dense()


class _SparseCsr(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        crow, col = torch.tensor([0, 1]), torch.tensor([0])
        dense = torch.ops.aten._sparse_csr_tensor_unsafe(crow, col, x[:1], [1, 3]).to_dense()
        return x + dense[0]


class _PublicSparse(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.sparse_coo_tensor(torch.tensor([[0]]), x[:1], [3]).to_dense()


class _Nested(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes, strides, offsets = torch.tensor([[3]]), torch.tensor([[1]]), torch.tensor([0])
        view = torch._nested_view_from_buffer(x, sizes, strides, offsets)
        return x + view.to_padded_tensor(0.0)[0]


class _Quantized(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch._make_per_tensor_quantized_tensor(torch.zeros(3, dtype=torch.int8), 1.0, 0)
        return x + q.dequantize().to(x.dtype)


class _PerChannel(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scales, zeros = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.long)
        ints = torch.zeros(3, dtype=torch.int8)
        return x + torch._make_per_channel_quantized_tensor(ints, scales, zeros, 0).dequantize()


class _Uninitialized(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.empty_like(x)


class _UnsafeView(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._unsafe_view(x, [3]) + torch.ops.aten._reshape_alias(x, [3], [1])


class _Backward(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = x.reshape(1, 1, 3, 1)
        indices = torch.zeros(1, 1, 1, 1, dtype=torch.long)
        return torch.ops.aten.max_pool2d_with_indices_backward(
            grid, grid, [1, 1], [1, 1], [0, 0], [1, 1], False, indices
        ).reshape(3)


class _StorageRebinding(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        y.set_(x)
        return y


UNSAFE = {
    "sparse COO unsafe": (_SparseCoo, ["aten::_sparse_coo_tensor_unsafe"]),
    "sparse CSR unsafe": (_SparseCsr, ["aten::_sparse_csr_tensor_unsafe"]),
    "sparse COO unchecked indices": (_PublicSparse, ["aten::sparse_coo_tensor"]),
    "nested view of a buffer": (_Nested, ["aten::_nested_view_from_buffer"]),
    "per-tensor quantized": (
        _Quantized,
        ["aten::_make_per_tensor_quantized_tensor", "aten::dequantize"],
    ),
    "per-channel quantized": (
        _PerChannel,
        ["aten::_make_per_channel_quantized_tensor", "aten::dequantize"],
    ),
    "uninitialized memory": (_Uninitialized, ["aten::empty_like"]),
    "unchecked views": (_UnsafeView, ["aten::_reshape_alias", "aten::_unsafe_view"]),
    "backward kernel": (_Backward, ["aten::max_pool2d_with_indices_backward"]),
    "storage rebinding": (_StorageRebinding, ["aten::set_"]),
}


def _refusal(refused: pytest.ExceptionInfo[InvalidArgument]) -> str:
    """The server's message, without the request id the client appends."""
    return str(refused.value).split(" (request id", 1)[0]


def _still_serving(client: Client) -> None:
    model = torch.nn.Linear(3, 2).double()
    x = torch.ones(3, dtype=torch.float64)
    result = client.jacobian(torch.jit.script(model), x)
    torch.testing.assert_close(result.jacobian, model.weight.detach())


@pytest.mark.parametrize("case", list(UNSAFE))
def test_memory_unsafe_constructor_is_refused_at_upload(client: Client, case: str) -> None:
    module, operators = UNSAFE[case]
    with pytest.raises(InvalidArgument) as refused:
        client.upload(torch.jit.script(module()))
    message = _refusal(refused)
    for operator in operators:
        assert f"{operator}" in message
    allowed = message.split("--allow-ops ", 1)[1].split(",")
    assert [name.split(".", 1)[0] for name in allowed] == sorted(operators)  # no overloads
    _still_serving(client)


class _TwoRefused(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print(x)
        return x + torch.from_file("/etc/hostname", size=3, dtype=torch.float32).to(x.dtype)


def test_two_disallowed_ops_are_named_in_one_refusal(client: Client) -> None:
    with pytest.raises(InvalidArgument) as refused:
        client.upload(torch.jit.script(_TwoRefused()))
    message = _refusal(refused)
    assert "2 operators the server does not allow" in message
    assert "aten::from_file (in forward); prim::Print (in forward)" in message
    assert message.endswith("--allow-ops aten::from_file,prim::Print")
    _still_serving(client)
