"""Archives built to talk around the static checks, each refused before torch loads it.

Every exploit here is real: loaded by plain torch (``torch.export.load`` or
``torch.jit.load``) it creates the marker file. Uploaded, each is refused with
INVALID_ARGUMENT saying what was wrong, the marker never appears, and the server goes on
serving a good model. A legitimate dynamic-shape .pt2 is still accepted and differentiated.
"""

from __future__ import annotations

import io
import pathlib
import re
import zipfile
from collections.abc import Callable, Iterator

import pytest
import torch

from conftest import running_server
from jacserve.client import Client, InvalidArgument
from jacserve.server.app import RunningServer
from tests import hostile

X = torch.randn(3)


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(str(tmp_path_factory.mktemp("checked-models")), workers=1) as s:
        yield s


@pytest.fixture(scope="module")
def client(checked: RunningServer) -> Iterator[Client]:
    with Client(checked.target, timeout=60) as c:
        yield c


def _script_with(name: str) -> bytes:
    """The good TorchScript archive with one more entry under its folder."""
    good = hostile.good_script()
    root = zipfile.ZipFile(io.BytesIO(good)).namelist()[0].split("/")[0]
    return hostile.with_entry(good, f"{root}/{name}")


def _code_name(data: bytes) -> bytes:
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    return next(n for n in names if n.endswith(".py")).encode()


def _renamed(data: bytes, change: Callable[[bytes], bytes], *, local_only: bool = False) -> bytes:
    old = _code_name(data)
    return hostile.with_name_bytes(data, old, change(old), local_only=local_only)


UPLOADS: dict[str, tuple[Callable[[pathlib.Path], bytes], str]] = {
    "expr_str that runs code": (
        lambda m: hostile.export_with_expression(str(m)),
        "symbolic-size expression (expr_str) that torch would evaluate",
    ),
    "guard that runs code": (
        lambda m: hostile.export_with_guard(str(m)),
        "shape guard (guards_code)",
    ),
    "case-variant weights config": (
        lambda m: hostile.export_with_case_variant_config(str(m)),
        "duplicate zip entry names",
    ),
    "TorchScript class __setstate__": (
        lambda m: hostile.script_class_with_setstate(str(m)),
        "mentions __setstate__",
    ),
    "__setstate__ in code/*.PY": (
        lambda m: hostile.script_with_hidden_code(str(m)),
        "mentions __setstate__",
    ),
    "__setstate__ in code/*.txt": (
        lambda m: hostile.script_with_hidden_code(str(m), ".txt"),
        "mentions __setstate__",
    ),
    "backslash in a name": (lambda m: _script_with("code\\x.py"), "contains a backslash"),
    "dot-dot segment": (lambda m: _script_with("code/../x.py"), "'..' segment"),
    "dot segment": (lambda m: _script_with("./code/x.py"), "'.' segment"),
    "empty segment": (lambda m: _script_with("code//x.py"), "empty segment"),
    "absolute name": (lambda m: hostile.with_entry(hostile.good_script(), "/x"), "absolute path"),
    "second top-level folder": (
        lambda m: hostile.with_entry(hostile.good_script(), "other/x"),
        "exactly one top-level folder",
    ),
    "entry outside any folder": (
        lambda m: hostile.with_entry(hostile.good_script(), "version"),
        "not inside the archive's top-level folder",
    ),
    "case-duplicate names": (lambda m: _script_with("DATA.PKL"), "duplicate zip entry names"),
    "NUL in a name": (
        lambda m: _renamed(hostile.good_script(), lambda n: n[:-4] + b"\0.py"),
        "NUL or control character",
    ),
    "non-UTF-8 name": (
        lambda m: _renamed(hostile.good_script(), lambda n: n[:-4] + b"\xff.py"),
        "not UTF-8",
    ),
    "local header name differs": (
        lambda m: _renamed(hostile.good_script(), lambda n: n[:-3] + b".PY", local_only=True),
        "broken local header",
    ),
    "trailing comment": (lambda m: hostile.with_comment(hostile.good_script()), "end record"),
    "data before the first entry": (
        lambda m: hostile.with_prefix(hostile.good_script()),
        "before its first zip entry",
    ),
}


@pytest.mark.parametrize("case", list(UPLOADS))
def test_archive_is_refused_saying_why_and_the_server_keeps_serving(client, marker, case):
    build, words = UPLOADS[case]
    with pytest.raises(InvalidArgument, match=re.escape(words)):
        client.upload(build(marker))
    assert client.jacobian(hostile.good_script(), X).jacobian.shape == (2, 3)


def test_a_dynamic_shape_export_is_accepted_and_differentiated(client):
    model_id = client.upload(hostile.dynamic_export())
    x = torch.randn(10, 4, dtype=torch.float32)  # not the example's 4 rows
    result = client.jacobian(model_id, x)
    expected = torch.autograd.functional.jacobian(hostile.Dynamic(), x)
    torch.testing.assert_close(result.jacobian.reshape(expected.shape), expected)
