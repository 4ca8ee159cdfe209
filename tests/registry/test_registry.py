"""A worker's registry of its one archive: format detection, content addressing, caps,
loading per device, refusing other archives' ids."""

from __future__ import annotations

import io
import zipfile

import pytest
import torch

from jacserve.server.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from jacserve.server.registry import ArchiveFormat, ArchiveRegistry, detect_format, model_id_of
from tests.models import FORMATS, MLP, archive_of


def _mlp_archive(fmt: str, n: int = 3) -> bytes:
    return archive_of(MLP(n, 4, 2, torch.float64), (torch.zeros(n, dtype=torch.float64),), fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_both_formats_are_recognized_and_described(fmt):
    registry = ArchiveRegistry(_mlp_archive(fmt))
    info = registry.info(registry.model_id)
    assert info.format is ArchiveFormat(fmt)
    assert [p.name for p in info.parameters] == [
        "layers.0.weight",
        "layers.0.bias",
        "layers.2.weight",
        "layers.2.bias",
    ]
    (method,) = info.methods
    assert method.name == "forward" and len(method.inputs) == 1
    if fmt == "torch_export":
        assert method.inputs[0].shape == (3,) and method.inputs[0].dtype == torch.float64


def test_the_id_is_the_sha256_and_other_ids_are_refused():
    data = _mlp_archive("torchscript")
    registry = ArchiveRegistry(data)
    assert registry.model_id == model_id_of(data)
    with pytest.raises(FailedPrecondition, match="serves model"):
        registry.get("a" * 64)
    fn, _ = registry.get(registry.model_id).method("forward")
    assert fn(torch.zeros(3, dtype=torch.float64)).shape == (2,)


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "it is empty"),
        (b"\x89PNG\r\n\x1a\n", "not a zip file"),
        (_zip({"a/data.pkl": b"x", "a/data/0": b"y"}), "torch.save checkpoint"),
        (_zip({"a/readme.txt": b"hi"}), "neither a TorchScript archive"),
        (_zip({"a/x": b"", "b/y": b""}), "exactly one top-level folder"),
    ],
)
def test_other_files_are_rejected_with_a_clear_message(data, fragment):
    with pytest.raises(InvalidArgument, match=fragment):
        detect_format(data, max_uncompressed_bytes=1 << 20)


def test_torch_save_checkpoints_are_explained():
    buffer = io.BytesIO()
    torch.save(torch.nn.Linear(2, 2).state_dict(), buffer)
    with pytest.raises(InvalidArgument, match="holds weights but no program"):
        ArchiveRegistry(buffer.getvalue())


def test_size_caps_apply_to_uncompressed_and_loaded_bytes():
    data = _mlp_archive("torchscript")
    with pytest.raises(ResourceExhausted, match="--max-loaded-bytes"):
        ArchiveRegistry(data, max_loaded_bytes=len(data))
    bomb = _zip({"a/archive_format": b"pt2", "a/zeros": bytes(10 << 20)})
    assert len(bomb) < 1 << 20
    with pytest.raises(ResourceExhausted, match="would uncompress to"):
        detect_format(bomb, max_uncompressed_bytes=1 << 20)
