"""The archive store: streamed receive into staging, commit, discard, quota, crash leftovers."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
import torch

from jacserve.server.errors import InvalidArgument, NotFound, ResourceExhausted
from jacserve.server.registry.store import STAGING, ArchiveStore
from tests.models import FORMATS, Affine, archive_of


def _archive(n: int = 3, fmt: str = "torchscript") -> bytes:
    return archive_of(Affine(n, 2, torch.float64), (torch.zeros(n, dtype=torch.float64),), fmt)


def _pieces(data: bytes, size: int = 1000) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _staging_files(store: ArchiveStore) -> list[str]:
    return sorted(p.name for p in (store.directory / STAGING).iterdir())


def _store(tmp_path, **caps: int) -> ArchiveStore:
    return ArchiveStore(tmp_path, max_archive_bytes=caps.pop("max_archive_bytes", 1 << 24), **caps)


@pytest.mark.parametrize("fmt", FORMATS)
def test_receive_stages_then_commit_keeps_the_archive(tmp_path, fmt):
    store, data = _store(tmp_path), _archive(fmt=fmt)
    staged = store.receive(_pieces(data))
    assert staged.model_id == hashlib.sha256(data).hexdigest()
    assert staged.format.value == fmt and staged.size_bytes == len(data)
    assert not staged.already_present and staged.path.read_bytes() == data
    assert staged.path.parent == tmp_path / STAGING and store.ids() == []
    store.commit(staged)
    assert store.ids() == [staged.model_id] and store.read(staged.model_id) == data
    assert _staging_files(store) == [] and store.usage() == (1, len(data))


def test_discard_leaves_nothing_and_frees_the_reservation(tmp_path):
    store, data = _store(tmp_path), _archive()
    staged = store.receive([data])
    assert store.usage() == (1, len(data))  # reserved while staged
    store.discard(staged)
    assert store.ids() == [] and _staging_files(store) == [] and store.usage() == (0, 0)


def test_an_archive_already_present_is_committed_as_a_no_op(tmp_path):
    store, data = _store(tmp_path), _archive()
    store.commit(store.receive([data]))
    again = store.receive(_pieces(data))
    assert again.already_present and store.usage() == (1, len(data))
    store.commit(again)
    assert store.ids() == [again.model_id] and _staging_files(store) == []


def test_add_returns_what_it_always_did(tmp_path):
    store, data = _store(tmp_path), _archive()
    model_id, fmt, already = store.add(data)
    assert (fmt.value, already) == ("torchscript", False)
    assert store.add(data) == (model_id, fmt, True) and _staging_files(store) == []


def _failing_chunks(data: bytes) -> Iterator[bytes]:
    yield data[:100]
    raise RuntimeError("the stream broke")


@pytest.mark.parametrize(
    ("chunks", "kwargs", "error", "fragment"),
    [
        (lambda d: [d[:-10]], {}, InvalidArgument, "not a zip file"),
        (lambda d: [d], {"expected_id": "0" * 64}, InvalidArgument, "corrupted or truncated"),
        (lambda d: _pieces(d + b"x" * (1 << 24)), {}, ResourceExhausted, "--max-archive-bytes"),
        (_failing_chunks, {}, RuntimeError, "the stream broke"),
    ],
    ids=["truncated", "expected-id", "too-large", "stream-error"],
)
def test_a_refused_upload_leaves_no_staging_file(tmp_path, chunks, kwargs, error, fragment):
    store = _store(tmp_path)
    with pytest.raises(error, match=fragment):
        store.receive(chunks(_archive()), **kwargs)
    assert _staging_files(store) == [] and store.ids() == [] and store.usage() == (0, 0)


def test_the_size_cap_stops_reading_at_once(tmp_path):
    store, read = _store(tmp_path, max_archive_bytes=10_000), []

    def chunks() -> Iterator[bytes]:
        for _ in range(1000):
            read.append(1000)
            yield b"x" * 1000

    with pytest.raises(ResourceExhausted, match="larger than the server's limit of 10000"):
        store.receive(chunks())
    assert sum(read) == 11_000


def test_quota_by_count_names_the_flag_and_frees_after_remove(tmp_path):
    store = _store(tmp_path, max_models=2)
    first, second = (store.receive([_archive(n)]) for n in (3, 4))  # both reserve
    with pytest.raises(ResourceExhausted, match=r"holds 2 models .*--max-models is 2.*DeleteModel"):
        store.receive([_archive(5)])
    store.commit(first)
    store.discard(second)
    store.commit(store.receive([_archive(5)]))
    with pytest.raises(ResourceExhausted, match="raise --max-models"):
        store.receive([_archive(6)])
    store.commit(store.receive([_archive(3)]))  # already present: takes no quota
    store.remove(first.model_id)
    store.commit(store.receive([_archive(6)]))
    assert len(store.ids()) == 2


def test_quota_by_bytes_counts_stored_and_staged_archives(tmp_path):
    small, large = _archive(3), _archive(40)
    store = _store(tmp_path, max_store_bytes=len(small) + len(large) - 1)
    staged = store.receive([small])
    with pytest.raises(ResourceExhausted, match=r"--max-store-bytes.*jacserve models delete") as e:
        store.receive([large])
    assert f"from {len(small)} bytes (1 models)" in str(e.value)
    store.commit(staged)
    again = store.receive([small])
    assert again.already_present and store.usage() == (1, len(small))  # never counted twice
    store.discard(again)
    store.remove(staged.model_id)
    store.commit(store.receive([large]))
    assert store.usage() == (1, len(large)) and _staging_files(store) == []


def test_reading_an_unknown_model_is_not_found(tmp_path):
    with pytest.raises(NotFound, match="is not registered"):
        _store(tmp_path).read("0" * 64)


def test_opening_the_store_removes_crash_leftovers(tmp_path):
    store, data = _store(tmp_path), _archive()
    model_id = store.add(data)[0]
    store.receive([data])  # never committed: the server "crashed"
    (tmp_path / f"{model_id}.partial-1234").write_bytes(b"an older server's temporary file")
    reopened = _store(tmp_path)
    assert _staging_files(reopened) == [] and reopened.ids() == [model_id]
    assert sorted(p.name for p in tmp_path.iterdir()) == [STAGING, f"{model_id}.archive"]
