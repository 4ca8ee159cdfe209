"""Static checks of a torch.export (.pt2) archive: what ``torch.export.load`` would run.

``torch.export.load`` evaluates strings from the archive (see
:mod:`~jacserve.server.registry.expressions`), unpickles weights and constants that a
config marks ``use_pickle`` or names ``custom_obj_*``/``opaque_obj_*``, unpickles legacy
``data/weights/<model>.pt`` files, and loads AOTInductor packages as native code. Every
JSON entry is parsed strictly (UTF-8, no duplicate keys, no NaN) and every string torch
would evaluate must fit the grammar; all names are compared ignoring case, as torch's
reader looks them up.

>>> import io, torch
>>> from jacserve.server.registry.zipview import ZipView
>>> buffer = io.BytesIO()
>>> torch.export.save(torch.export.export(torch.nn.Tanh(), (torch.ones(2),)), buffer)
>>> with ZipView.open(buffer.getvalue(), max_uncompressed_bytes=1 << 24) as view:
...     check_export_archive(view)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from jacserve.server.errors import InvalidArgument
from jacserve.server.registry.expressions import ExpressionError, check_guard, check_sympy_repr
from jacserve.server.registry.zipview import ZipView

__all__ = ["check_export_archive", "strict_json"]

_PICKLED_OBJECT_PREFIXES = ("custom_obj_", "opaque_obj_")
_PAYLOAD_FOLDERS = ("data/weights", "data/constants")
_PAYLOAD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def check_export_archive(view: ZipView) -> None:
    """Refuse a .pt2 archive whose loading could run code (see the module docstring).

    Raises:
        InvalidArgument: naming the entry and what in it was refused.
    """
    for entry in view.entries():
        relative = view.relative(entry)
        folder, _, filename = relative.lower().rpartition("/")
        if "aotinductor/" in relative.lower():
            raise InvalidArgument(
                f"archive contains an AOTInductor package ({relative}), which torch would "
                "load as native code; upload the torch.export program without "
                "aoti_compile_and_package"
            )
        if folder in _PAYLOAD_FOLDERS and filename.startswith(_PICKLED_OBJECT_PREFIXES):
            raise InvalidArgument(
                f"archive stores a Python or script object as a pickle ({relative}); the "
                "server unpickles nothing from an upload. Keep only tensors in the program's "
                "constants"
            )
        if folder in _PAYLOAD_FOLDERS and filename.endswith(".pt"):
            raise InvalidArgument(
                f"archive stores weights or constants in the legacy pickled format "
                f"({relative}); the server unpickles nothing from an upload. Save the "
                "program again with torch.export.save"
            )
        if filename.endswith(".json"):
            document = strict_json(view.read(entry), relative)
            if folder in _PAYLOAD_FOLDERS and filename.endswith("_config.json"):
                _check_payload_config(document, relative)
            _check_expressions(document, relative)


def strict_json(raw: bytes, where: str) -> Any:
    """Parse UTF-8 JSON refusing duplicate keys, NaN and Infinity.

    Raises:
        InvalidArgument: naming ``where`` and the problem.

    >>> strict_json(b'{"a": 1, "a": 2}', "x.json")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    InvalidArgument: archive entry x.json is not strict JSON: duplicate key 'a'
    """
    try:
        return json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_refuse_duplicates,
            parse_constant=_refuse_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidArgument(f"archive entry {where} is not strict JSON: {exc}") from None


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):  # some key twice: name the first repeated one
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return result


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _check_payload_config(document: Any, where: str) -> None:
    config = document.get("config") if isinstance(document, dict) else None
    if not isinstance(config, dict) or not all(isinstance(v, dict) for v in config.values()):
        raise InvalidArgument(f"archive entry {where} is not the JSON torch.export writes")
    for fqn, entry in config.items():
        path = entry.get("path_name")
        if entry.get("use_pickle", False) is not False or (
            isinstance(path, str) and path.lower().startswith(_PICKLED_OBJECT_PREFIXES)
        ):
            raise InvalidArgument(
                f"archive stores {fqn!r} as a pickle ({where}); the server unpickles nothing "
                "from an upload. Save tensors as plain dense tensors (for example call "
                ".contiguous() on subclassed or non-standard tensors before exporting)"
            )
        if not isinstance(path, str) or not _PAYLOAD_NAME.fullmatch(path):
            raise InvalidArgument(
                f"archive entry {where}: {fqn!r} has path_name {path!r}; expected a plain "
                "file name such as weight_0"
            )


def _walk(document: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair of every object in ``document``, without recursion."""
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                yield key, value
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)


def _check_expressions(document: Any, where: str) -> None:
    for key, value in _walk(document):
        if key == "expr_str":
            _check_one(check_sympy_repr, value, where, "symbolic-size expression (expr_str)")
        elif key == "guards_code":
            if not isinstance(value, list):
                raise InvalidArgument(f"archive entry {where}: guards_code is not a list")
            for guard in value:
                _check_one(check_guard, guard, where, "shape guard (guards_code)")


def _check_one(check: Any, text: Any, where: str, what: str) -> None:
    try:
        check(text)
    except ExpressionError as exc:
        shown = repr(text)[:120] if isinstance(text, str) else type(text).__name__
        raise InvalidArgument(
            f"archive entry {where} has a {what} that torch would evaluate and that is not "
            f"one torch writes ({exc}): {shown}. The server evaluates no code from an upload; "
            "export the program again with torch.export"
        ) from None
