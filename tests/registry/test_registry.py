"""The registry: format detection, content addressing, caps, LRU eviction, persistence."""

from __future__ import annotations

import io
import zipfile

import pytest
import torch

from jacserve.server.errors import InvalidArgument, NotFound, ResourceExhausted
from jacserve.server.registry import ArchiveFormat, ModelRegistry, detect_format, model_id_of
from tests.models import FORMATS, MLP, archive_of


def _mlp_archive(fmt: str, n: int = 3) -> bytes:
    return archive_of(MLP(n, 4, 2, torch.float64), (torch.zeros(n, dtype=torch.float64),), fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_both_formats_are_recognized_and_described(tmp_path, fmt):
    registry = ModelRegistry(tmp_path)
    info, already = registry.add(_mlp_archive(fmt))
    assert not already and info.format is ArchiveFormat(fmt)
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


def test_ids_are_sha256_and_uploads_are_deduplicated(tmp_path):
    registry = ModelRegistry(tmp_path)
    data = _mlp_archive("torchscript")
    first, _ = registry.add(data)
    second, already = registry.add(data)
    assert first.model_id == second.model_id == model_id_of(data) and already
    assert len(registry.list()) == 1


def test_a_corrupted_upload_is_refused(tmp_path):
    with pytest.raises(InvalidArgument, match="corrupted or truncated"):
        ModelRegistry(tmp_path).add(_mlp_archive("torchscript"), expected_id="0" * 64)


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


def test_torch_save_checkpoints_are_explained(tmp_path):
    buffer = io.BytesIO()
    torch.save(torch.nn.Linear(2, 2).state_dict(), buffer)
    with pytest.raises(InvalidArgument, match="holds weights but no program"):
        ModelRegistry(tmp_path).add(buffer.getvalue())


def test_size_caps_apply_to_compressed_and_uncompressed_bytes(tmp_path):
    data = _mlp_archive("torchscript")
    with pytest.raises(ResourceExhausted, match="--max-archive-bytes"):
        ModelRegistry(tmp_path, max_archive_bytes=len(data) - 1).add(data)
    bomb = _zip({"a/archive_format": b"pt2", "a/zeros": bytes(10 << 20)})
    assert len(bomb) < 1 << 20
    with pytest.raises(ResourceExhausted, match="would uncompress to"):
        detect_format(bomb, max_uncompressed_bytes=1 << 20)


def test_loaded_models_are_evicted_least_recently_used_first(tmp_path):
    archives = [_mlp_archive("torchscript", n) for n in (3, 4, 5)]
    sizes = [ModelRegistry(tmp_path / "probe").add(a)[0].loaded_size_bytes for a in archives]
    budget = sizes[0] + sizes[1] + 100
    registry = ModelRegistry(tmp_path / "store", max_loaded_bytes=budget)
    ids = [registry.add(a)[0].model_id for a in archives[:2]]
    registry.get(ids[0])  # ids[1] is now the least recently used
    registry.add(archives[2])
    count, size = registry.cache_stats()
    assert count == 2 and size <= budget
    # An evicted model is reloaded from its stored archive and still works.
    assert registry.get(ids[0]) is registry.get(ids[0])  # still cached: same object
    model = registry.get(ids[1])
    fn, _ = model.method("forward")
    assert fn(torch.zeros(4, dtype=torch.float64)).shape == (2,)


def test_archives_persist_across_restarts_and_delete_removes_them(tmp_path):
    model_id = ModelRegistry(tmp_path).add(_mlp_archive("torch_export"))[0].model_id
    restarted = ModelRegistry(tmp_path)
    assert restarted.info(model_id).format is ArchiveFormat.TORCH_EXPORT
    restarted.delete(model_id)
    with pytest.raises(NotFound):
        restarted.get(model_id)
    assert not list(tmp_path.iterdir())


def test_malformed_ids_are_invalid_and_unknown_ids_not_found(tmp_path):
    registry = ModelRegistry(tmp_path)
    with pytest.raises(InvalidArgument, match="64 lowercase hex"):
        registry.info("model.pt")
    with pytest.raises(NotFound, match="upload it first"):
        registry.info("a" * 64)
