"""GetModel says what an archive records about each input and, explicitly, what it does
not: a TorchScript input has its name and declared type (``"Tensor"``,
``"Tuple[Tensor, Tensor]"`` …) with dtype DTYPE_UNSPECIFIED and has_shape=false; a
torch.export input has dtype and shape. Read through a raw stub, the SDK and the CLI.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Optional

import grpc
import pytest
import torch

from conftest import running_server
from jacserve.cli import main
from jacserve.client import Client
from jacserve.v1 import jacobian_service_pb2 as pb
from jacserve.v1 import jacobian_service_pb2_grpc as pb_grpc
from tests.models import SinExp, archive_of

F64 = torch.float64


class _Mixed(torch.nn.Module):
    """Inputs of several TorchScript types."""

    def forward(
        self,
        x: torch.Tensor,
        pair: tuple[torch.Tensor, torch.Tensor],
        bias: Optional[torch.Tensor] = None,  # noqa: UP045 (TorchScript needs Optional)
        scale: float = 1.0,
    ) -> torch.Tensor:
        y = x * pair[0] + pair[1]
        if bias is not None:
            y = y + bias
        return y * scale


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with running_server(str(tmp_path_factory.mktemp("models")), workers=1) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: Any) -> Iterator[Client]:
    with Client(server.target, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server: Any) -> Iterator[pb_grpc.JacobianServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.JacobianServiceStub(channel)


def test_a_scripted_models_inputs_have_their_type_and_say_dtype_and_shape_are_unknown(client, stub):
    model_id = client.upload(torch.jit.script(_Mixed()))
    (method,) = stub.GetModel(pb.GetModelRequest(model_id=model_id), timeout=30).model.methods
    wire = [(i.name, i.type, i.dtype, i.has_shape, list(i.shape)) for i in method.inputs]
    unknown = (pb.DTYPE_UNSPECIFIED, False, [])
    assert wire == [
        ("x", "Tensor", *unknown),
        ("pair", "Tuple[Tensor, Tensor]", *unknown),
        ("bias", "Optional[Tensor]", *unknown),
        ("scale", "float", *unknown),
    ]
    (info,) = client.get_model(model_id).methods
    assert [(i.name, i.type) for i in info.inputs] == [
        ("x", "Tensor"),
        ("pair", "Tuple[Tensor, Tensor]"),
        ("bias", "Optional[Tensor]"),
        ("scale", "float"),
    ]
    assert not any(i.dtype_known or i.shape_known for i in info.inputs)
    assert all(i.dtype is None and i.shape is None for i in info.inputs)
    listed = next(m for m in client.list_models() if m.model_id == model_id)
    assert listed.methods[0].inputs == info.inputs  # the catalog keeps the types


def test_an_exported_models_inputs_have_dtype_and_shape(client, stub):
    x = torch.ones(3, dtype=F64)
    model_id = client.upload(archive_of(SinExp(), (x,), "torch_export"))
    (method,) = stub.GetModel(pb.GetModelRequest(model_id=model_id), timeout=30).model.methods
    (spec,) = method.inputs
    assert (spec.type, spec.dtype, spec.has_shape, list(spec.shape)) == (
        "Tensor",
        pb.DTYPE_FLOAT64,
        True,
        [3],
    )
    ((sdk_spec,),) = [m.inputs for m in client.get_model(model_id).methods]
    assert sdk_spec.dtype_known and sdk_spec.shape_known and sdk_spec.type == "Tensor"
    assert sdk_spec.dtype == F64 and sdk_spec.shape == (3,)


def test_the_cli_shows_what_is_known_of_each_input(server, client, capsys):
    scripted = client.upload(torch.jit.script(_Mixed()))
    exported = client.upload(archive_of(SinExp(), (torch.ones(3, dtype=F64),), "torch_export"))
    assert main(["models", "show", scripted, "--target", server.target]) == 0
    out = capsys.readouterr().out
    assert "x: Tensor (dtype and shape unknown)" in out
    assert "pair: Tuple[Tensor, Tensor] (dtype and shape unknown)" in out
    assert main(["models", "show", exported, "--target", server.target]) == 0
    out = capsys.readouterr().out
    assert "torch.float64[3]" in out and "unknown" not in out
