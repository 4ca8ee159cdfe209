"""Hypothesis-generated requests straight at the service: every answer is a deliberate
status code (never INTERNAL or UNKNOWN), nothing hangs, and the server keeps serving."""

from __future__ import annotations

import grpc
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jacserve.client import Client
from jacserve.v1 import jacobian_service_pb2 as pb
from jacserve.v1 import jacobian_service_pb2_grpc as pb_grpc
from tests.models import MLP, archive_of

DELIBERATE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}

tensors = st.builds(
    pb.Tensor,
    dtype=st.integers(min_value=-1, max_value=12),
    shape=st.lists(st.one_of(st.integers(-3, 6), st.sampled_from([1 << 40, 1 << 62])), max_size=4),
    data=st.binary(max_size=96),
)


@pytest.fixture(scope="module")
def target(server, client: Client) -> tuple[str, str]:
    x = torch.randn(3, dtype=torch.float64)
    return server.target, client.upload(
        archive_of(MLP(3, 4, 2, torch.float64), (x,), "torchscript")
    )


def _function(draw_id: str, known: str) -> pb.FunctionRef:
    return pb.FunctionRef(model_id=known if draw_id == "known" else draw_id)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    kind=st.sampled_from(["Jvp", "Vjp", "Jacobian", "ParameterGradients"]),
    model=st.sampled_from(["known", "", "x" * 64, "0" * 64, "not hex"]),
    method=st.sampled_from(["", "forward", "missing", "__init__"]),
    first=st.lists(tensors, max_size=3),
    second=st.lists(tensors, max_size=3),
    wrt=st.lists(st.integers(-2, 4), max_size=3),
    batched=st.booleans(),
    mode=st.integers(0, 5),
)
def test_random_requests_get_deliberate_status_codes(
    target, kind, model, method, first, second, wrt, batched, mode
):
    address, known = target
    function = _function(model, known)
    function.method = method
    request = {
        "Jvp": lambda: pb.JvpRequest(function=function, primals=first, tangents=second,
                                     wrt=wrt, batched=batched),
        "Vjp": lambda: pb.VjpRequest(function=function, primals=first, cotangents=second,
                                     wrt=wrt, batched=batched),
        "Jacobian": lambda: pb.JacobianRequest(function=function, inputs=first, wrt=wrt,
                                               batched=batched, mode=mode),
        "ParameterGradients": lambda: pb.ParameterGradientsRequest(
            function=function, inputs=first, cotangents=second),
    }[kind]()  # fmt: skip
    with grpc.insecure_channel(address) as channel:
        call = getattr(pb_grpc.JacobianServiceStub(channel), kind)
        try:
            call(request, timeout=60)
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
            assert error.details(), "an error without a message"
    assert code in DELIBERATE, f"{kind} answered {code}"
