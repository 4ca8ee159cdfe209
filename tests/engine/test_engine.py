"""The engine against hand-derived Jacobians, finite differences and torch.autograd.functional."""

from __future__ import annotations

import io

import pytest
import torch

from jacserve.server import engine
from jacserve.server.errors import FailedPrecondition, InvalidArgument, ModelExecutionError
from tests.models import MLP, PairDistance, cases, central_differences

MODES = ("forward", "reverse", "auto")


def _rows(result: engine.EngineResult, n_inputs: int) -> list[list[torch.Tensor]]:
    values = list(result.values)
    return [values[i : i + n_inputs] for i in range(0, len(values), n_inputs)]


@pytest.mark.parametrize("case", cases(), ids=lambda c: c.name)
@pytest.mark.parametrize("mode", MODES)
def test_jacobian_matches_closed_form_and_finite_differences(case, mode):
    wrt = [j for j, t in enumerate(case.inputs) if t.is_floating_point()]
    result = engine.jacobian(case.module, case.inputs, mode=mode)
    expected = case.jacobian(*case.inputs)
    fd = central_differences(case.module, case.inputs, wrt)
    got = _rows(result, len(wrt))
    for i, row in enumerate(expected):
        for j, block in enumerate(row):
            torch.testing.assert_close(got[i][j], block, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(got[i][j], fd[i][j], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", MODES)
def test_jacobian_matches_autograd_functional(dtype, mode):
    model = MLP(5, 8, 3, dtype)
    x = torch.randn(5, dtype=dtype)
    result = engine.jacobian(model, [x], mode=mode)
    expected = torch.autograd.functional.jacobian(model, x)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-13}
    torch.testing.assert_close(result.values[0], expected, **tol)
    assert result.values[0].dtype == dtype


def test_auto_mode_picks_forward_for_few_inputs_and_reverse_for_few_outputs():
    wide = engine.jacobian(MLP(2, 4, 50, torch.float64), [torch.randn(2, dtype=torch.float64)])
    tall = engine.jacobian(MLP(50, 4, 2, torch.float64), [torch.randn(50, dtype=torch.float64)])
    assert (wide.metrics.mode, wide.metrics.passes) == ("forward", 2)
    assert (tall.metrics.mode, tall.metrics.passes) == ("reverse", 2)
    assert "n=2" in wide.metrics.mode_reason and "m=50" in wide.metrics.mode_reason


def test_jvp_and_vjp_match_autograd_functional_on_several_inputs():
    case = next(c for c in cases() if c.name == "two_in_two_out")
    x, y = case.inputs
    v = (torch.randn_like(x), torch.randn_like(y))
    u = (torch.randn(4, dtype=torch.float64), torch.randn((), dtype=torch.float64))
    fn = case.module
    jv = engine.jvp(fn, case.inputs, v)
    uj = engine.vjp(fn, case.inputs, u)
    _, ref_jv = torch.autograd.functional.jvp(fn, case.inputs, v)
    _, ref_uj = torch.autograd.functional.vjp(fn, case.inputs, u)
    for got, ref in zip(jv.values, ref_jv, strict=True):
        torch.testing.assert_close(got, ref)
    for got, ref in zip(uj.values, ref_uj, strict=True):
        torch.testing.assert_close(got, ref)
    assert jv.tuple_output and uj.tuple_output


def test_wrt_selects_inputs_and_keeps_others_fixed():
    case = next(c for c in cases() if c.name == "two_in_two_out")
    x, y = case.inputs
    result = engine.jacobian(case.module, case.inputs, wrt=[1])
    assert len(result.values) == 2  # two outputs × one input
    torch.testing.assert_close(result.values[0], torch.diag(x))
    torch.testing.assert_close(result.values[1], 3 * y**2)


def test_model_never_changes_the_callers_inputs():
    case = next(c for c in cases() if c.name == "mutates_input")
    (x,) = case.inputs
    before = x.clone()
    for mode in MODES:
        engine.jacobian(case.module, [x], mode=mode)
    engine.jvp(case.module, [x], [torch.ones_like(x)])
    engine.vjp(case.module, [x], [torch.ones_like(x)])
    torch.testing.assert_close(x, before, rtol=0, atol=0)


def _loaded_script(module: torch.nn.Module) -> torch.jit.ScriptModule:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


def test_loaded_torchscript_forward_mode_stays_correct_on_repeated_calls():
    # See NOTE: [TorchScript executor] — without the guard the 2nd call on is wrong.
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh()).double()
    loaded = _loaded_script(model)
    x = torch.randn(3, dtype=torch.float64)
    expected = torch.autograd.functional.jacobian(model, x)
    for _ in range(6):
        got = engine.jacobian(loaded, [x], mode="forward").values[0]
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-13)


def test_missing_forward_rule_falls_back_and_is_reported():
    model = PairDistance()
    x = torch.randn(6, dtype=torch.float64)
    expected = torch.autograd.functional.jacobian(model, x)
    jac = engine.jacobian(model, [x], mode="forward")
    torch.testing.assert_close(jac.values[0], expected)
    assert jac.metrics.mode == "reverse"
    assert "forward-mode rule" in jac.metrics.fallback_reason
    v = torch.randn(6, dtype=torch.float64)
    jv = engine.jvp(model, [x], [v])
    torch.testing.assert_close(jv.values[0], expected @ v)
    assert "reverse-mode Jacobian" in jv.metrics.fallback_reason  # cdist has no double backward


class _SquareWithoutBatchingRule(torch.autograd.Function):
    """x², with forward and reverse rules that vmap cannot batch.

    vmap refuses an autograd.Function without a vmap rule (forward mode), and its
    backward reads a value with ``.item()``, which vmap cannot batch (reverse mode).
    """

    @staticmethod
    def forward(x):
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return (2.0 + 0.0 * grad.sum().item()) * x * grad

    @staticmethod
    def jvp(ctx, tangent):
        (x,) = ctx.saved_tensors
        return 2 * x * tangent


def test_op_without_batching_rule_falls_back_to_a_loop():
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    for mode in ("forward", "reverse"):
        result = engine.jacobian(_SquareWithoutBatchingRule.apply, [x], mode=mode)
        torch.testing.assert_close(result.values[0], torch.diag(2 * x))
        assert not result.metrics.vectorized
        assert "vmap failed" in result.metrics.fallback_reason


def test_parameter_gradients_match_autograd():
    model = MLP(4, 6, 3, torch.float64)
    x = torch.randn(4, dtype=torch.float64)
    u = torch.randn(3, dtype=torch.float64)
    params = dict(model.named_parameters())
    result = engine.parameter_gradients(model, [x], params, cotangents=[u])
    expected = torch.autograd.grad(model(x), list(params.values()), grad_outputs=u)
    assert result.names == tuple(params)
    for got, ref in zip(result.values, expected, strict=True):
        torch.testing.assert_close(got, ref)
    assert all(p.grad is None for p in params.values())


def test_parameter_gradients_of_a_scalar_output_need_no_cotangent():
    model = torch.nn.Linear(3, 1).double()
    x = torch.randn(3, dtype=torch.float64)
    result = engine.parameter_gradients(
        lambda t: model(t).sum(), [x], dict(model.named_parameters())
    )
    torch.testing.assert_close(result.values[0], x.reshape(1, 3))
    torch.testing.assert_close(result.values[1], torch.ones(1, dtype=torch.float64))


def test_unused_parameter_gets_zero_gradient_and_a_warning():
    used = torch.tensor([2.0], requires_grad=True)
    unused = torch.tensor([5.0], requires_grad=True)
    result = engine.parameter_gradients(
        lambda x: (used * x).sum(), [torch.ones(1)], {"used": used, "unused": unused}
    )
    torch.testing.assert_close(result.values[1], torch.zeros(1))
    assert any("unused" in w for w in result.metrics.warnings)


def test_nonfinite_results_are_counted_and_reported():
    x = torch.tensor([0.0, 4.0], dtype=torch.float64)
    result = engine.jacobian(torch.sqrt, [x])
    # d sqrt(x)/dx at 0 is inf, and the off-diagonal 0·inf is NaN, as in autograd.
    torch.testing.assert_close(
        result.values[0], torch.autograd.functional.jacobian(torch.sqrt, x), equal_nan=True
    )
    assert result.metrics.nonfinite_count == 2
    assert any("non-finite" in w for w in result.metrics.warnings)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: engine.jacobian(torch.sin, [torch.zeros(2)], wrt=[3]),
            "wrt index 3 is out of range",
        ),
        (lambda: engine.jacobian(torch.sin, [torch.zeros(2)], wrt=[0, 0]), "must not repeat"),
        (
            lambda: engine.jacobian(lambda x: x * 2, [torch.zeros(2, dtype=torch.int64)]),
            "at least one floating-point input",
        ),
        (
            lambda: engine.jvp(torch.sin, [torch.zeros(2)], [torch.zeros(3)]),
            "tangents[0]: expected shape [2]",
        ),
        (
            lambda: engine.jvp(torch.sin, [torch.zeros(2)], [torch.zeros(2, dtype=torch.float64)]),
            "dtype float32",
        ),
        (lambda: engine.vjp(torch.sin, [torch.zeros(2)], []), "expected 1 cotangents"),
        (
            lambda: engine.jacobian(lambda x: x.argmax(), [torch.zeros(2)]),
            "only floating-point outputs",
        ),
        (lambda: engine.jacobian(torch.sin, [torch.zeros(2)], mode="sideways"), "got 'sideways'"),
        (
            lambda: engine.parameter_gradients(torch.sin, [torch.zeros(2)], {"w": torch.ones(1)}),
            "does not return a single scalar",
        ),
    ],
)
def test_invalid_requests_raise_invalid_argument_with_the_reason(call, message):
    with pytest.raises(InvalidArgument) as info:
        call()
    assert message in str(info.value)


def test_model_errors_are_reported_as_model_execution_errors():
    with pytest.raises(ModelExecutionError, match="mat1 and mat2 shapes cannot be multiplied"):
        engine.jacobian(torch.nn.Linear(3, 2), [torch.zeros(5)])


def test_parameter_gradients_without_parameters_is_a_failed_precondition():
    with pytest.raises(FailedPrecondition, match="no floating-point parameters"):
        engine.parameter_gradients(torch.sin, [torch.zeros(1)], {})


def test_jacobian_over_max_elements_is_refused_before_the_passes():
    from jacserve.server.errors import ResourceExhausted

    with pytest.raises(ResourceExhausted, match="n\\*m = 100\\*100 = 10000"):
        engine.jacobian(torch.sin, [torch.zeros(100)], max_elements=9999)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_concurrent_threads_get_correct_jacobians(mode):
    # See NOTE: [Forward-mode AD is process-global]: unguarded, forward mode from several
    # threads returned wrong Jacobians here (3 of 120) with no error.
    import threading

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh()).double()
    x = torch.randn(3, dtype=torch.float64)
    expected = torch.autograd.functional.jacobian(model, x)
    wrong: list[int] = []

    def work() -> None:
        for _ in range(40):
            got = engine.jacobian(model, [x], mode=mode).values[0]
            if not torch.allclose(got, expected, rtol=1e-12, atol=1e-13):
                wrong.append(1)
            got_jvp = engine.jvp(model, [x], [torch.ones(3, dtype=torch.float64)]).values[0]
            if not torch.allclose(got_jvp, expected.sum(1), rtol=1e-12, atol=1e-13):
                wrong.append(1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong, f"{len(wrong)} wrong results out of 320"


def test_a_forced_forward_jacobian_records_no_reverse_tape():
    # the first call is the evaluation; func.vjp would hand it grad-tracking inputs
    tracked: list[bool] = []

    def f(x: torch.Tensor) -> torch.Tensor:
        tracked.append(torch._C._functorch.is_gradtrackingtensor(x))
        return torch.tanh(x)

    x = torch.randn(3, dtype=torch.float64)
    forward = engine.jacobian(f, [x], mode="forward")
    assert forward.metrics.mode == "forward" and tracked[0] is False
    torch.testing.assert_close(forward.values[0], torch.diag(1 - torch.tanh(x) ** 2))
    tracked.clear()
    engine.jacobian(f, [x], mode="reverse")
    assert tracked[0] is True  # reverse mode reuses the evaluation's tape
