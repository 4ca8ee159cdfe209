"""Nested inputs and outputs (dicts, tuples, lists) against a real server, in every
archive format, every number compared with torch.func in float64."""

from __future__ import annotations

import grpc
import pytest
import torch
from torch.func import hessian, jacrev, jvp, vjp

from jacserve.client import InvalidArgument
from jacserve.pytree import flatten
from jacserve.v1 import jacobian_service_pb2 as pb
from jacserve.v1 import jacobian_service_pb2_grpc as pb_grpc
from tests.pytree_models import (
    F64,
    FORMATS,
    DictInput,
    DictLoss,
    DictOutput,
    NestedOutput,
    archive,
    assert_tree_close,
)

torch.manual_seed(0)
X = torch.randn(3, dtype=F64)
Y = torch.randn(4, dtype=F64)
BATCH = {"x": torch.randn(3, dtype=F64), "bias": torch.randn(2, dtype=F64)}
SCALE = torch.tensor(1.7, dtype=F64)


def _uploaded(client, module, example, fmt):
    return client.upload(archive(module, example, fmt))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("mode", ["auto", "forward", "reverse"])
def test_jacobian_of_a_dict_output_is_a_dict_like_jacrev(client, fmt, mode):
    m = DictOutput()
    model = _uploaded(client, m, (X, Y), fmt)
    want = jacrev(m, argnums=(0, 1))(X, Y)
    for stream in (False, True):
        r = client.jacobian(model, (X, Y), mode=mode, stream=stream)
        assert list(r.jacobian) == ["logits", "hidden"]
        assert_tree_close(r.jacobian, want)
        assert_tree_close(r.output, m(X, Y))
    single = client.jacobian(model, (X, Y), wrt=[1], mode=mode)
    assert_tree_close(single.jacobian, jacrev(m, argnums=(1,))(X, Y))


@pytest.mark.parametrize("fmt", FORMATS)
def test_jvp_and_vjp_of_a_dict_output(client, fmt):
    m = DictOutput()
    model = _uploaded(client, m, (X, Y), fmt)
    tangents = (torch.randn(3, dtype=F64), torch.randn(4, dtype=F64))
    out, want_jvp = jvp(m, (X, Y), tangents)
    r = client.jvp(model, (X, Y), tangents)
    assert_tree_close(r.jvp, want_jvp)
    assert_tree_close(r.output, out)
    # cotangents given in another key order are matched by key
    cotangents = {"hidden": torch.randn(4, dtype=F64), "logits": torch.randn(2, dtype=F64)}
    _, pullback = vjp(m, X, Y)
    want = pullback({k: cotangents[k] for k in ("logits", "hidden")})  # torch.func: in order
    r = client.vjp(model, (X, Y), cotangents)
    assert_tree_close(r.vjp, want)
    assert_tree_close(r.output, out)
    batched = {k: torch.stack([v, 2 * v]) for k, v in cotangents.items()}
    r = client.vjp(model, (X, Y), batched, batched=True)
    assert_tree_close(r.vjp[0][1], 2 * want[0])


@pytest.mark.parametrize("fmt", FORMATS)
def test_parameter_gradients_with_dict_cotangents(client, fmt):
    m = DictOutput()
    model = _uploaded(client, m, (X, Y), fmt)
    cotangents = {"logits": torch.randn(2, dtype=F64), "hidden": torch.randn(4, dtype=F64)}
    out = m(X, Y)
    total = sum((out[k] * cotangents[k]).sum() for k in out)
    names = [n for n, _ in m.named_parameters()]
    want = dict(zip(names, torch.autograd.grad(total, list(m.parameters())), strict=True))
    r = client.parameter_gradients(model, (X, Y), cotangents)
    assert set(r.gradients) == set(want)
    for name, value in want.items():
        torch.testing.assert_close(r.gradients[name], value, atol=1e-10, rtol=1e-10)
    assert_tree_close(r.output, {k: v.detach() for k, v in out.items()})


@pytest.mark.parametrize("fmt", FORMATS)
def test_nested_outputs_keep_their_structure(client, fmt):
    m = NestedOutput()
    model = _uploaded(client, m, (X,), fmt)
    r = client.jacobian(model, X, mode="forward")
    assert isinstance(r.jacobian, tuple) and isinstance(r.jacobian[1], list)
    assert_tree_close(r.jacobian, jacrev(m)(X))
    tangent = torch.randn(3, dtype=F64)
    assert_tree_close(client.jvp(model, X, tangent).jvp, jvp(m, (X,), (tangent,))[1])
    cotangents = (
        {"hidden": torch.randn(2, dtype=F64), "logits": torch.randn(2, dtype=F64)},
        [torch.tensor(0.5, dtype=F64), torch.randn(3, dtype=F64)],
    )
    _, pullback = vjp(m, X)
    reordered = ({k: cotangents[0][k] for k in ("logits", "hidden")}, cotangents[1])
    assert_tree_close(client.vjp(model, X, reordered).vjp, pullback(cotangents)[0])


@pytest.mark.parametrize("fmt", FORMATS)
def test_dict_inputs(client, fmt):
    m = DictInput()
    model = _uploaded(client, m, (BATCH, SCALE), fmt)
    r = client.jacobian(model, (BATCH, SCALE))
    assert_tree_close(r.jacobian, jacrev(m, argnums=(0, 1))(BATCH, SCALE))
    assert_tree_close(r.output, m(BATCH, SCALE))
    r = client.jacobian(model, (BATCH, SCALE), wrt=[0], mode="forward")
    assert_tree_close(r.jacobian, jacrev(m, argnums=(0,))(BATCH, SCALE))
    tangents = ({"x": torch.randn(3, dtype=F64), "bias": torch.randn(2, dtype=F64)}, SCALE)
    reordered = ({k: tangents[0][k] for k in ("bias", "x")}, SCALE)  # matched by key
    assert_tree_close(
        client.jvp(model, (BATCH, SCALE), reordered).jvp, jvp(m, (BATCH, SCALE), tangents)[1]
    )
    cotangents = {"out": torch.randn(2, dtype=F64), "norm": torch.tensor(0.3, dtype=F64)}
    _, pullback = vjp(m, BATCH, SCALE)
    want = pullback({k: cotangents[k] for k in ("out", "norm")})
    assert_tree_close(client.vjp(model, (BATCH, SCALE), cotangents).vjp, want)


def test_an_integer_leaf_of_a_dict_input_is_passed_through(client):
    class Embed(torch.nn.Module):
        def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {"y": batch["x"] * batch["n"].to(torch.float64)}

    batch = {"x": torch.randn(3, dtype=F64), "n": torch.tensor([1, 2, 3])}
    for fmt in FORMATS:
        model = _uploaded(client, Embed(), (batch,), fmt)
        r = client.jacobian(model, batch)
        assert set(r.jacobian["y"]) == {"x"}
        torch.testing.assert_close(r.jacobian["y"]["x"], torch.diag(batch["n"].double()))
        with pytest.raises(ValueError, match="structured like the differentiated inputs"):
            client.jvp(model, batch, {"x": torch.ones(3, dtype=F64), "n": torch.ones(3)})


@pytest.mark.parametrize("fmt", FORMATS)
def test_second_order_of_a_loss_in_a_dict(client, fmt):
    m = DictLoss()
    batch = {"w": torch.randn(3, dtype=F64), "c": torch.tensor(0.7, dtype=F64)}
    model = _uploaded(client, m, (X, batch), fmt)
    r = client.hessian(model, (X, batch))
    assert list(r.hessian) == ["loss"]
    assert_tree_close(r.hessian, hessian(m, argnums=(0, 1))(X, batch))
    vectors = (torch.randn(3, dtype=F64), {"w": torch.randn(3, dtype=F64), "c": SCALE})

    def gradient(x, b):
        return torch.func.grad(lambda *a: m(*a)["loss"], argnums=(0, 1))(x, b)

    want = jvp(gradient, (X, batch), vectors)[1]
    assert_tree_close(client.hvp(model, (X, batch), vectors).hvp, want)


@pytest.mark.parametrize("fmt", FORMATS)
def test_analysis_flattens_leaves_in_order_and_names_them(client, fmt):
    m = DictOutput()
    model = _uploaded(client, m, (X, Y), fmt)
    blocks = jacrev(m, argnums=(0, 1))(X, Y)
    matrix = torch.cat(
        [torch.cat([b.reshape(o.numel(), -1) for b in blocks[k]], 1) for k, o in m(X, Y).items()]
    )
    s = client.sensitivity(model, (X, Y))
    assert s.output_names == ("logits", "hidden") and s.input_names == ("0", "1")
    y = torch.cat([v.reshape(-1) for v in m(X, Y).values()]).detach()
    want = matrix * torch.cat([X, Y])[None, :] / y[:, None]
    torch.testing.assert_close(s.elasticities, want, atol=1e-10, rtol=1e-10)
    assert s.top_inputs[0].name in ("0", "1")
    t = client.top_singular(model, (X, Y), 2)
    torch.testing.assert_close(t.values, torch.linalg.svdvals(matrix)[:2], atol=1e-8, rtol=1e-8)
    sparse = client.jacobian(model, (X, Y), sparsity="detect")
    torch.testing.assert_close(sparse.jacobian.to_dense(), matrix, atol=1e-10, rtol=1e-10)
    assert_tree_close(sparse.output, m(X, Y))


@pytest.mark.parametrize("fmt", FORMATS)
def test_verification_follows_the_structure(client, fmt):
    m = DictInput()
    model = _uploaded(client, m, (BATCH, SCALE), fmt)
    point = (BATCH, SCALE)
    cotangents = {"norm": torch.tensor(1.0, dtype=F64), "out": torch.randn(2, dtype=F64)}
    results = [
        client.jacobian(model, point, verify=3),
        client.jvp(model, point, ({"x": torch.ones(3, dtype=F64), "bias": torch.ones(2, dtype=F64)}, SCALE), verify=2),
        client.vjp(model, point, cotangents, verify=2),
        client.parameter_gradients(model, point, cotangents, verify=2),
    ]  # fmt: skip
    for r in results:
        assert r.metrics.verification.max_relative_error < 1e-6, r.metrics.verification


def test_batched_jacobian_of_dicts(client):
    m = DictOutput()
    model = _uploaded(client, m, (X, Y), "torch_export")
    xs, ys = torch.randn(5, 3, dtype=F64), torch.randn(5, 4, dtype=F64)
    r = client.jacobian(model, (xs, ys), batched=True)
    assert_tree_close(r.jacobian, torch.vmap(jacrev(m, argnums=(0, 1)))(xs, ys))


def test_modules_with_dict_inputs_and_outputs_go_straight_to_the_sdk(client):
    m = DictOutput()
    assert_tree_close(client.jacobian(m, (X, Y)).jacobian, jacrev(m, argnums=(0, 1))(X, Y))
    d = DictInput()
    r = client.jacobian(d, (BATCH, SCALE), mode="forward")
    assert_tree_close(r.jacobian, jacrev(d, argnums=(0, 1))(BATCH, SCALE))
    n = NestedOutput()
    assert_tree_close(client.jacobian(n, X).jacobian, jacrev(n)(X))


class IntLeaf(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        return x * 2, 3


class IntKeys(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        return {0: x * 2}


def test_outputs_that_are_not_tensors_are_refused(client):
    leaf = client.upload(torch.jit.script(IntLeaf()))
    with pytest.raises(InvalidArgument, match=r"output of method 'forward' '1' is a int"):
        client.jacobian(leaf, X)
    keys = client.upload(torch.jit.script(IntKeys()))
    with pytest.raises(InvalidArgument, match="only string keys are supported"):
        client.jvp(keys, X, X)


def test_mismatched_structures_are_refused(client):
    m = DictOutput()
    model = _uploaded(client, m, (X, Y), "scripted")
    expected = r"cotangents: expected the structure of the output of method 'forward', "
    with pytest.raises(InvalidArgument, match=expected + r"\{'logits': \*, 'hidden': \*\}"):
        client.vjp(model, (X, Y), {"logits": torch.ones(2, dtype=F64)})
    with pytest.raises(InvalidArgument, match=expected + r".*got \[\{'logits': \*\}, \*\]"):
        client.parameter_gradients(model, (X, Y), [{"logits": torch.ones(2, dtype=F64)}, Y])
    with pytest.raises(InvalidArgument, match="expected 2 cotangents"):  # plain: in order
        client.parameter_gradients(model, (X, Y), [torch.ones(2, dtype=F64)] * 2 + [X])
    with pytest.raises(ValueError, match="no floating-point tensor"):
        client.jacobian(model, ({"n": torch.tensor([1])}, Y), wrt=[0])


def test_raw_requests_check_the_tree_and_old_clients_see_a_tuple(server, client):
    m = DictOutput()
    model = _uploaded(client, m, (X, Y), "torch_export")
    from jacserve.codec import encode_tensors

    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.JacobianServiceStub(channel)
        request = pb.JacobianRequest(
            function=pb.FunctionRef(model_id=model), inputs=encode_tensors([X, Y])
        )
        old = stub.Jacobian(request)  # no input_tree: each tensor one argument
        assert old.tuple_output and len(old.outputs) == 2 and len(old.jacobian) == 4
        assert list(old.output_tree.keys) == ["logits", "hidden"]
        request.input_tree.CopyFrom(flatten((X,), what="x")[1].to_wire())
        with pytest.raises(grpc.RpcError) as info:
            stub.Jacobian(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "as many leaves as input tensors (2)" in info.value.details()
        request.input_tree.CopyFrom(pb.Tree(kind=pb.TREE_KIND_DICT, keys=["a"]))
        with pytest.raises(grpc.RpcError) as info:
            stub.Jacobian(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "one distinct key per child" in info.value.details()
