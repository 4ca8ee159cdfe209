"""Every derivative over a real server, against closed forms, finite differences and autograd."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jacserve.client import Client
from jacserve.codec import decode_tensor, encode_tensors
from jacserve.v1 import jacobian_service_pb2 as pb
from jacserve.v1 import jacobian_service_pb2_grpc as pb_grpc
from tests.models import FORMATS, MLP, archive_of, cases, central_differences

CASES = {c.name: c for c in cases()}


def _as_rows(jacobian, tuple_output: bool, inputs_tuple: bool):
    """Turn the SDK's torch.autograd.functional layout back into [output][input] rows."""
    if tuple_output:
        return [list(row) if inputs_tuple else [row] for row in jacobian]
    return [list(jacobian)] if inputs_tuple else [[jacobian]]


@pytest.fixture(scope="module", params=FORMATS)
def fmt(request):
    return request.param


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("mode", ["forward", "reverse", "auto"])
def test_jacobian_matches_closed_form_and_finite_differences(client: Client, fmt, name, mode):
    case = CASES[name]
    model_id = client.upload(archive_of(case.module, case.inputs, fmt))
    wrt = [j for j, t in enumerate(case.inputs) if t.is_floating_point()]
    inputs = case.inputs if len(case.inputs) > 1 else case.inputs[0]
    result = client.jacobian(model_id, inputs, mode=mode)
    expected = case.jacobian(*case.inputs)
    fd = central_differences(case.module, case.inputs, wrt)
    got = _as_rows(result.jacobian, isinstance(result.output, tuple), len(case.inputs) > 1)
    for i, row in enumerate(expected):
        for j, block in enumerate(row):
            torch.testing.assert_close(got[i][j], block, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(got[i][j], fd[i][j], rtol=1e-6, atol=1e-7)
    assert result.metrics.mode in ("forward", "reverse")
    if mode != "auto":
        assert result.metrics.mode == mode


def test_structure_follows_torch_autograd_functional(client: Client, fmt):
    case = CASES["two_in_two_out"]
    result = client.jacobian(archive_of(case.module, case.inputs, fmt), case.inputs)
    expected = torch.autograd.functional.jacobian(case.module, case.inputs)
    assert isinstance(result.jacobian, tuple) and len(result.jacobian) == 2
    for got_row, ref_row in zip(result.jacobian, expected, strict=True):
        assert len(got_row) == 2
        for got, ref in zip(got_row, ref_row, strict=True):
            torch.testing.assert_close(got, ref)
    assert isinstance(result.output, tuple) and result.output[1].dim() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_jvp_vjp_and_jacobian_of_an_mlp_match_autograd(client: Client, fmt, dtype):
    model = MLP(6, 16, 4, dtype)
    x = torch.randn(6, dtype=dtype)
    model_id = client.upload(archive_of(model, (x,), fmt))
    v, u = torch.randn(6, dtype=dtype), torch.randn(4, dtype=dtype)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {}
    _, ref_jv = torch.autograd.functional.jvp(model, x, v)
    _, ref_uj = torch.autograd.functional.vjp(model, x, u)
    jv = client.jvp(model_id, x, v)
    uj = client.vjp(model_id, x.numpy(), u.numpy())  # NumPy in, torch out
    torch.testing.assert_close(jv.jvp, ref_jv, **tol)
    torch.testing.assert_close(uj.vjp, ref_uj, **tol)
    torch.testing.assert_close(jv.output, model(x), **tol)
    jac = client.jacobian(model_id, x, mode="forward").jacobian
    torch.testing.assert_close(jac, torch.autograd.functional.jacobian(model, x), **tol)
    assert jac.dtype == dtype


def test_integer_inputs_are_passed_but_not_differentiated(client: Client, fmt):
    case = CASES["scaled_by_index"]
    x, k = case.inputs
    result = client.jacobian(archive_of(case.module, case.inputs, fmt), (x, k))
    (block,) = result.jacobian  # tuple inputs, one floating input differentiated
    torch.testing.assert_close(block, torch.diag(k.double()))
    assert result.metrics.input_size == 3


def test_parameter_gradients_match_autograd(client: Client, fmt):
    model = MLP(5, 7, 3, torch.float64)
    x = torch.randn(5, dtype=torch.float64)
    u = torch.randn(3, dtype=torch.float64)
    result = client.parameter_gradients(archive_of(model, (x,), fmt), x, u)
    params = dict(model.named_parameters())
    expected = torch.autograd.grad(model(x), list(params.values()), grad_outputs=u)
    assert list(result.gradients) == list(params)
    for got, ref in zip(result.gradients.values(), expected, strict=True):
        torch.testing.assert_close(got, ref)
    assert result.metrics.mode == "reverse" and result.metrics.input_size == sum(
        p.numel() for p in params.values()
    )


def test_parameter_gradients_of_a_subset_and_of_a_scalar_output(client: Client, fmt):
    model = torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Flatten(0)).double()
    x = torch.randn(1, 3, dtype=torch.float64)
    result = client.parameter_gradients(archive_of(model, (x,), fmt), x, parameters=["0.weight"])
    assert list(result.gradients) == ["0.weight"]
    torch.testing.assert_close(result.gradients["0.weight"], x)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_jvp_and_vjp_are_consistent(client: Client, seed):
    # u·(J v) == (uᵀ J)·v for random u, v: forward and reverse agree through the server.
    g = torch.Generator().manual_seed(seed)
    x, v = (
        torch.randn(5, generator=g, dtype=torch.float64),
        torch.randn(5, generator=g, dtype=torch.float64),
    )
    u = torch.randn(4, generator=g, dtype=torch.float64)
    model_id = client.upload(archive_of(MLP(5, 8, 4, torch.float64), (x,), "torchscript"))
    jv = client.jvp(model_id, x, v).jvp
    uj = client.vjp(model_id, x, u).vjp
    torch.testing.assert_close(torch.dot(u, jv), torch.dot(uj, v), rtol=1e-12, atol=1e-12)


def test_repeated_requests_from_threads_stay_correct(client: Client, fmt):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh()).double()
    x = torch.randn(3, dtype=torch.float64)
    expected = torch.autograd.functional.jacobian(model, x)
    model_id = client.upload(archive_of(model, (x,), fmt))
    failures: list[str] = []

    def worker(index: int) -> None:
        for round_ in range(5):
            for mode in ("forward", "reverse", "auto"):
                got = client.jacobian(model_id, x, mode=mode).jacobian
                if not torch.allclose(got, expected, rtol=1e-12, atol=1e-13):
                    failures.append(f"thread {index} round {round_} {mode}: {got - expected}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:3]


def test_the_model_never_changes_the_callers_data_and_upload_objects_directly(client: Client):
    case = CASES["mutates_input"]
    (x,) = case.inputs
    before = x.clone()
    scripted = torch.jit.script(case.module)
    result = client.jacobian(scripted, x)  # a ScriptModule where a model id is expected
    torch.testing.assert_close(result.jacobian, torch.diag(8 * x))
    torch.testing.assert_close(x, before, rtol=0, atol=0)
    exported = torch.export.export(case.module, (x.clone(),))
    torch.testing.assert_close(client.jacobian(exported, x).jacobian, torch.diag(8 * x))


def test_metrics_report_mode_passes_phases_and_memory(client: Client):
    model = MLP(3, 8, 40, torch.float64)
    x = torch.randn(3, dtype=torch.float64)
    model_id = client.upload(archive_of(model, (x,), "torchscript"))
    first = client.jacobian(model_id, x).metrics
    again = client.jacobian(model_id, x).metrics
    assert (first.input_size, first.output_size) == (3, 40)
    # Auto mode planned by pass counts on first use (nothing measured yet); the second
    # request's estimate of forward mode is the first request's own run.
    assert first.mode == again.mode == "forward" and first.passes == 3
    assert first.estimated_forward_seconds == first.estimated_reverse_seconds == 0
    assert "no measurements yet" in first.mode_reason and first.timing["plan"] > 0
    assert again.estimated_forward_seconds == pytest.approx(first.timing["derivative"])
    assert first.vectorized and not first.fallback_reason and first.chunks == 1
    assert set(first.timing) == {
        "decode",
        "load",
        "plan",
        "forward",
        "derivative",
        "encode",
        "total",
    }
    assert all(v >= 0 for v in first.timing.values())
    assert first.timing["total"] >= first.timing["derivative"] > 0
    assert first.memory_method == "cpu_rss_high_water" and first.peak_memory_bytes >= 0
    assert first.device == "cpu" and first.nonfinite_count == 0 and first.batch_size == 0


def test_inline_archives_work_without_an_upload(server):
    import grpc

    model = MLP(3, 4, 2, torch.float64)
    x = torch.randn(3, dtype=torch.float64)
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.JacobianServiceStub(channel)
        response = stub.Jacobian(
            pb.JacobianRequest(
                function=pb.FunctionRef(archive=archive_of(model, (x,), "torch_export")),
                inputs=encode_tensors([x]),
                mode=pb.DERIVATIVE_MODE_REVERSE,
            ),
            timeout=60,
        )
    torch.testing.assert_close(
        decode_tensor(response.jacobian[0]), torch.autograd.functional.jacobian(model, x)
    )


def test_nonfinite_results_are_reported_not_hidden(client: Client):
    class Sqrt(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sqrt(x)

    x = np.array([0.0, 4.0])
    result = client.jacobian(archive_of(Sqrt(), (torch.from_numpy(x),), "torchscript"), x)
    assert torch.isinf(result.jacobian[0, 0])
    assert result.metrics.nonfinite_count == 2
    assert any("non-finite" in w for w in result.metrics.warnings)


@pytest.mark.parametrize("mode", ["forward", "reverse", "auto"])
def test_every_mode_with_a_memory_budget_completes(client, mode):
    torch.manual_seed(0)
    model = torch.jit.script(torch.nn.Linear(3, 2).double())
    x = torch.randn(3, dtype=torch.float64)
    result = client.jacobian(model, x, mode=mode, max_memory_bytes=10**8, timeout=60)
    torch.testing.assert_close(result.jacobian, torch.func.jacrev(model)(x))
