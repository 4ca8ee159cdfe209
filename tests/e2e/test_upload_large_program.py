"""A large exported program (100 RK4 steps unrolled: 2,500 graph nodes) uploads as a
.pt2 and through the SDK's module path, and its Jacobian is torch.func's."""

from __future__ import annotations

import io
import json
import zipfile

import torch
from torch._export.serde.serialize import ExportedProgramSerializer
from torch.func import jacrev

from jacserve.client._archive import archive_bytes
from jacserve.client._pt2_saving import copy_schema, fast_canonical_check
from tests.registry.test_pt2_decoding import RK4

STEPS = 100


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return RK4(STEPS).double()


X = torch.tensor([0.3, -0.2, 0.5, 1.0], dtype=torch.float64)


def test_the_rk4_pt2_uploads_and_its_jacobian_is_jacrevs(client):
    model = _model(1)
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(model, (X,)), buffer)
    model_id = client.upload(buffer.getvalue())
    info = client.get_model(model_id)
    assert info.format == "torch_export" and len(info.parameters) == 4
    result = client.jacobian(model_id, X)
    torch.testing.assert_close(result.jacobian, jacrev(model)(X), rtol=1e-12, atol=1e-12)


def test_the_rk4_module_path_gives_jacrevs_jacobian(client):
    model = _model(2)
    result = client.jacobian(model, X)
    torch.testing.assert_close(result.jacobian, jacrev(model)(X), rtol=1e-12, atol=1e-12)


def test_the_sdks_save_writes_torchs_bytes_and_leaves_the_program_alone():
    program = torch.export.export(RK4(5).double(), (X,))
    plain, fast = io.BytesIO(), io.BytesIO()
    torch.export.save(program, plain)
    with fast_canonical_check():
        torch.export.save(program, fast)
        torch.export.save(program, again := io.BytesIO())
    assert fast.getvalue() == plain.getvalue() == again.getvalue()
    serialized = ExportedProgramSerializer().serialize(program).exported_program
    copied = copy_schema(serialized)
    assert copied == serialized
    copied.graph_module.graph.nodes[0].target = "changed"  # a deep, independent copy
    assert serialized.graph_module.graph.nodes[0].target != "changed"


def test_the_sdks_archive_carries_no_stack_traces_and_reproduces_the_model():
    model = RK4(STEPS // 5).double()
    data = archive_bytes(model, example_inputs=(X,))
    archive = zipfile.ZipFile(io.BytesIO(data))
    (name,) = [n for n in archive.namelist() if n.endswith("models/model.json")]
    nodes = json.loads(archive.read(name))["graph_module"]["graph"]["nodes"]
    assert len(nodes) > 20 * STEPS // 5
    assert not any(node.get("metadata", {}).get("stack_trace") for node in nodes)
    loaded = torch.export.load(io.BytesIO(data)).module()
    torch.testing.assert_close(loaded(X), model(X), rtol=0, atol=0)
    assert torch.fx.config.do_not_emit_stack_traces is False  # put back after exporting
