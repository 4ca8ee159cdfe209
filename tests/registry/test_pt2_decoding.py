"""Decoding a .pt2 program's JSON with remembered type hints against torch's plain
decoding, and the checks around it: whole programs decode to equal objects, malformed
documents fail as they do plainly, torch's module is restored after the block, and
hostile archives are still refused (NOTE: [Decoding a .pt2 program])."""

from __future__ import annotations

import io
import json
import threading
import typing
import zipfile

import pytest
import torch
from torch._export.serde import schema, serialize

from jacserve._pt2_decoding import fast_schema_decoding
from jacserve.server.errors import InvalidArgument
from jacserve.server.registry import ArchiveFormat, detect_format
from jacserve.server.registry.export_checks import strict_json
from jacserve.server.registry.loading import load_model
from tests.models import MLP


class RK4(torch.nn.Module):
    """A 4→8→4 tanh MLP right-hand side, ``steps`` explicit RK4 steps (unrolled by export)."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.hidden, self.out, self.steps = torch.nn.Linear(4, 8), torch.nn.Linear(8, 4), steps

    def rhs(self, y: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(y)))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        h = 0.05
        for _ in range(self.steps):
            k1 = self.rhs(y)
            k2 = self.rhs(y + h / 2 * k1)
            k3 = self.rhs(y + h / 2 * k2)
            k4 = self.rhs(y + h * k3)
            y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return y


class Branchy(torch.nn.Module):
    """A buffer, a constant, control flow (a subgraph) and a tuple output."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor([2.0, 3.0]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.cond(x.sum() > 0, lambda v: v.sin(), lambda v: v.cos(), (x,))
        return y * self.scale, x.exp()


def _programs() -> dict[str, bytes]:
    batch = torch.export.Dim("batch", min=2)
    cases = {
        "mlp": torch.export.export(MLP(3, 4, 2, torch.float64), (torch.ones(3, dtype=torch.float64),)),
        "rk4": torch.export.export(RK4(3), (torch.ones(4),)),
        "branchy": torch.export.export(Branchy(), (torch.ones(2),)),
        "dynamic": torch.export.export(
            torch.nn.Linear(3, 2), (torch.ones(4, 3),), dynamic_shapes=({0: batch},)
        ),
    }  # fmt: skip
    out = {}
    for name, program in cases.items():
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        out[name] = buffer.getvalue()
    return out


PROGRAMS = _programs()
INPUTS = {  # another batch size for the dynamic one
    "mlp": torch.randn(3, dtype=torch.float64),
    "rk4": torch.randn(4),
    "branchy": -torch.ones(2),
    "dynamic": torch.randn(5, 3),
}


def _model_json(data: bytes) -> dict:
    archive = zipfile.ZipFile(io.BytesIO(data))
    (name,) = [n for n in archive.namelist() if n.endswith("models/model.json")]
    return json.loads(archive.read(name))


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_whole_programs_decode_to_what_torch_decodes(name):
    document = _model_json(PROGRAMS[name])
    expected = serialize._dict_to_dataclass(schema.ExportedProgram, document)
    with fast_schema_decoding():
        assert serialize.typing is not typing  # the remembering view is in place
        assert serialize._dict_to_dataclass(schema.ExportedProgram, document) == expected


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_loaded_programs_compute_what_torch_loads(name):
    data = PROGRAMS[name]
    plain = torch.export.load(io.BytesIO(data))
    with fast_schema_decoding():
        fast = torch.export.load(io.BytesIO(data))
    assert str(fast.graph) == str(plain.graph)
    assert fast.graph_signature == plain.graph_signature
    x = INPUTS[name]
    torch.testing.assert_close(fast.module()(x), plain.module()(x))


@pytest.mark.parametrize(
    ("cls", "document"),
    [
        (schema.Device, "cpu"),  # not an object: torch indexes it anyway
        (schema.Argument, {"as_int": 1, "as_float": 2.0}),  # a union with two tags
        (schema.Argument, {"no_such_tag": 1}),
        (schema.Argument, [1]),
        (schema.TensorMeta, {"dtype": 1, "sizes": 3}),  # a list field given a number
        (schema.ExportedProgram, {"graph_module": {"graph": {"nodes": [{"target": 7}]}}}),
    ],
)
def test_malformed_documents_fail_or_decode_as_torch_does(cls, document):
    try:
        expected = serialize._dict_to_dataclass(cls, document)
    except Exception as exc:
        with fast_schema_decoding(), pytest.raises(type(exc)):
            serialize._dict_to_dataclass(cls, document)
    else:
        with fast_schema_decoding():
            assert serialize._dict_to_dataclass(cls, document) == expected


def test_torch_decodes_plainly_outside_the_block():
    with fast_schema_decoding():
        with fast_schema_decoding():  # nested
            assert serialize.typing is not typing
        assert serialize.typing is not typing
    assert serialize.typing is typing


def test_concurrent_blocks_decode_alike_and_restore_torch():
    # torch.export.load itself is not thread-safe (one deserializer at a time); the
    # blocks around it must be
    document, results = _model_json(PROGRAMS["rk4"]), []

    def decode() -> None:
        with fast_schema_decoding():
            results.append(serialize._dict_to_dataclass(schema.ExportedProgram, document))

    threads = [threading.Thread(target=decode) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 and all(r == results[0] for r in results)
    assert serialize.typing is typing


def test_the_worker_still_refuses_operators_outside_the_allowlist():
    class Empty(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.empty(2)

    buffer = io.BytesIO()
    torch.export.save(torch.export.export(Empty(), (torch.ones(2),)), buffer)
    with pytest.raises(InvalidArgument, match="aten::empty"):
        load_model(buffer.getvalue(), ArchiveFormat.TORCH_EXPORT)


def test_strict_json_still_refuses_duplicate_keys_anywhere():
    with pytest.raises(InvalidArgument, match="duplicate key 'b'"):
        strict_json(b'{"a": [{"b": 1, "c": 2, "b": 3}]}', "x.json")
    assert strict_json(b'{"a": [{"b": 1, "c": 2}]}', "x.json") == {"a": [{"b": 1, "c": 2}]}
    data = PROGRAMS["mlp"]
    assert detect_format(data, max_uncompressed_bytes=1 << 26) is ArchiveFormat.TORCH_EXPORT
