"""Hostile and broken archives for the attack tests, each built here from real torch output.

Every exploit writes a marker file if it ever runs; the tests check that it never does.
"""

from __future__ import annotations

import io
import json
import pickle
import warnings
import zipfile
from collections.abc import Callable
from typing import Any

import torch


def _save_script(module: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


def _save_export(module: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> bytes:
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(module, example), buffer)
    return buffer.getvalue()


def rewrite(
    data: bytes, change: dict[str, bytes | None], add: dict[str, bytes] | None = None
) -> bytes:
    """A copy of a zip with entries whose names end with a key replaced (None: removed)."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for entry in source.infolist():
            matches = [k for k in change if entry.filename.endswith(k)]
            if not matches:
                target.writestr(entry, source.read(entry))
            elif change[matches[0]] is not None:
                same_entry = zipfile.ZipInfo(entry.filename, date_time=entry.date_time)
                target.writestr(same_entry, change[matches[0]])  # the same bytes each call
        root = source.namelist()[0].split("/", 1)[0]
        for name, content in (add or {}).items():
            target.writestr(zipfile.ZipInfo(f"{root}/{name}"), content)
    return out.getvalue()


class _Exploit:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def exploit_pickle(marker: str) -> bytes:
    """A pickle that creates ``marker`` when loaded."""
    return pickle.dumps(_Exploit(marker))


def good_script() -> bytes:
    torch.manual_seed(0)
    return _save_script(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh()))


def good_export() -> bytes:
    torch.manual_seed(0)
    return _save_export(
        torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh()), (torch.ones(3),)
    )


def zip_bomb(uncompressed_bytes: int) -> bytes:
    """A small zip that inflates to ``uncompressed_bytes`` of zeros."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("model/data.pkl", "w", force_zip64=True) as entry:
            block = bytes(1 << 20)
            for _ in range(uncompressed_bytes >> 20):
                entry.write(block)
        archive.writestr("model/code/__torch__.py", "")
    return out.getvalue()


def duplicate_entries() -> bytes:
    """A TorchScript archive whose code entry appears twice (readers disagree on which wins)."""
    data = good_script()
    name = next(n for n in zipfile.ZipFile(io.BytesIO(data)).namelist() if n.endswith(".py"))
    out = io.BytesIO(data)
    with zipfile.ZipFile(out, "a") as archive, __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore")
        archive.writestr(name, "def forward(self, x): return x\n")
    return out.getvalue()


def script_with_pickled_data(marker: str) -> bytes:
    """A TorchScript archive whose data.pkl is a Python exploit."""
    return rewrite(good_script(), {"/data.pkl": exploit_pickle(marker)})


def export_with_pickled_weight(marker: str) -> bytes:
    """A .pt2 archive that marks a weight as pickled and stores an exploit there."""
    data = good_export()
    archive = zipfile.ZipFile(io.BytesIO(data))
    config_name = next(n for n in archive.namelist() if n.endswith("model_weights_config.json"))
    config = json.loads(archive.read(config_name))
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    return rewrite(
        data,
        {
            "model_weights_config.json": json.dumps(config).encode(),
            f"weights/{first['path_name']}": exploit_pickle(marker),
        },
    )


def export_with_pickled_sample_inputs(marker: str) -> bytes:
    """A .pt2 archive whose sample inputs (unpickled by torch.export.load) are an exploit."""
    return rewrite(good_export(), {"sample_inputs/model.pt": exploit_pickle(marker)})


def export_with_aotinductor() -> bytes:
    """A .pt2 archive carrying an AOTInductor shared object."""
    return rewrite(good_export(), {}, {"data/aotinductor/model/model.so": b"\x7fELF"})


class _SetState(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.ones(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return (self.scale, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        self.scale = state[0] * 2
        self.training = state[1]


def setstate_script() -> bytes:
    return _save_script(_SetState())


class _ReadsFile(torch.nn.Module):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        data = torch.from_file(self.path, shared=False, size=4, dtype=torch.uint8)
        return x * data[:2].to(x.dtype)


class _WritesFile(torch.nn.Module):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, self.path)
        return x * 2


class _Prints(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print(x)
        return x * 2


class _WritesOutOfBounds(torch.nn.Module):
    """Scatters into a dense tensor at an index 10**8 past its end (unchecked COO indices)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        indices = torch.tensor([[100_000_000]])
        sparse = torch.ops.aten._sparse_coo_tensor_unsafe(indices, x[:1], [3])
        return x + sparse.to_dense()


class _Loops(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = 0
        while i >= 0:
            x = x * 1.0
            i = i + 1
        return x


class _MemoryBomb(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.zeros([100_000_000_000]).sum()


class _Detaches(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x.detach()


def file_reader(path: str) -> bytes:
    return _save_script(_ReadsFile(path))


def file_writer(path: str) -> bytes:
    return _save_script(_WritesFile(path))


def printer() -> bytes:
    return _save_script(_Prints())


def out_of_bounds_writer() -> bytes:
    return _save_script(_WritesOutOfBounds())


def infinite_loop() -> bytes:
    return _save_script(_Loops())


def memory_bomb() -> bytes:
    return _save_script(_MemoryBomb())


def detacher() -> bytes:
    return _save_script(_Detaches())


def deeply_nested(depth: int = 200_000) -> bytes:
    """A TorchScript archive whose code nests ``depth`` parentheses: the loader's parser
    recurses once per level and overflows its stack."""
    data = good_script()
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    code = next(n for n in names if n.endswith("activation.py"))
    text = zipfile.ZipFile(io.BytesIO(data)).read(code).decode()
    nested = "torch.tanh(" + "(" * depth + "input" + ")" * depth + ")"
    return rewrite(
        data, {code.split("/", 1)[1]: text.replace("torch.tanh(input)", nested).encode()}
    )


def slow_to_load(statements: int = 40_000) -> bytes:
    """A valid TorchScript archive whose activation runs ``statements`` assignments: the
    loader compiles each one, which takes seconds."""
    data = good_script()
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    code = next(n for n in names if n.endswith("activation.py"))
    text = zipfile.ZipFile(io.BytesIO(data)).read(code).decode()
    body = "".join("    input = torch.add(input, 0.0)\n" for _ in range(statements))
    slow = text.replace("    return torch.tanh(input)", body + "    return torch.tanh(input)")
    return rewrite(data, {code.split("/", 1)[1]: slow.encode()})


# --- archives that talk around static checks (tests/e2e/test_archive_checks.py) ---


class Dynamic(torch.nn.Module):
    """``tanh(linear(x))`` plus a mix of ``x``'s row pairs: reshapes give symbolic sizes
    such as ``FloorDiv`` of the row count."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pairs = x.reshape(-1, 2, 4).sum(1).repeat(2, 1)
        return torch.tanh(self.linear(x)) + pairs[:, :3]


def dynamic_export() -> bytes:
    """A legitimate .pt2 of :class:`Dynamic` whose input has 2·b rows (b from 1 to 512)."""
    b = torch.export.Dim("b", min=1, max=512)
    program = torch.export.export(Dynamic(), (torch.randn(4, 4),), dynamic_shapes=({0: 2 * b},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def _rewrite_json(data: bytes, suffix: str, change: Callable[[dict[str, Any]], None]) -> bytes:
    name = next(n for n in zipfile.ZipFile(io.BytesIO(data)).namelist() if n.endswith(suffix))
    document = json.loads(zipfile.ZipFile(io.BytesIO(data)).read(name))
    change(document)
    return rewrite(data, {name.split("/", 1)[1]: json.dumps(document).encode()})


def export_with_expression(marker: str) -> bytes:
    """A dynamic-shape .pt2 one of whose symbolic sizes, sympified, runs ``touch marker``."""
    payload = f"Add(Integer(__import__('os').system('touch {marker}')), "

    def change(program: dict[str, Any]) -> None:
        for tensor in program["graph_module"]["graph"]["tensor_values"].values():
            for size in tensor["sizes"]:
                if "as_expr" in size:
                    size["as_expr"]["expr_str"] = payload + size["as_expr"]["expr_str"] + ")"
                    return

    return _rewrite_json(dynamic_export(), "models/model.json", change)


def export_with_guard(marker: str) -> bytes:
    """A .pt2 whose shape guard (exec'd when sample inputs are present) runs ``touch``."""

    def change(program: dict[str, Any]) -> None:
        program["guards_code"].append(f"__import__('os').system('touch {marker}') == 0")

    return _rewrite_json(dynamic_export(), "models/model.json", change)


def export_with_case_variant_config(marker: str) -> bytes:
    """A .pt2 with a second weights config, ``model_weights_CONFIG.json``, that marks a
    weight pickled (an exploit in ``weight_pickled``). torch checks that the lower-case
    name exists, then its case-insensitive reader finds the variant."""
    data = good_export()
    archive = zipfile.ZipFile(io.BytesIO(data))
    config_name = next(n for n in archive.namelist() if n.endswith("model_weights_config.json"))
    config = json.loads(archive.read(config_name))
    first = next(iter(config["config"].values()))
    first.update(use_pickle=True, path_name="weight_pickled")
    root = config_name.split("/", 1)[0]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:  # first in the zip: where miniz's search lands
        target.writestr(config_name.replace("config.json", "CONFIG.json"), json.dumps(config))
        for entry in archive.infolist():
            target.writestr(entry, archive.read(entry))
        target.writestr(f"{root}/data/weights/weight_pickled", exploit_pickle(marker))
    return out.getvalue()


class _Held:
    """A TorchScript class whose ``__setstate__`` writes a file when unpickled."""

    def __init__(self, value: torch.Tensor, path: str) -> None:
        self.value = value
        self.path = path

    def __getstate__(self) -> tuple[torch.Tensor, str]:
        return (self.value, self.path)

    def __setstate__(self, state: tuple[torch.Tensor, str]) -> None:
        torch.save(state[0], state[1])
        self.value = state[0]
        self.path = state[1]


class _HoldsObject(torch.nn.Module):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.held = torch.jit.script(_Held)(torch.ones(3), path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.held.value


def script_class_with_setstate(marker: str) -> bytes:
    """A TorchScript module holding a class object whose ``__setstate__`` writes ``marker``."""
    return _save_script(_HoldsObject(marker))


def script_with_hidden_code(marker: str, extension: str = ".PY") -> bytes:
    """:func:`script_class_with_setstate` with its code entries renamed ``*.PY`` (torch's
    reader finds them ignoring case)."""
    data = script_class_with_setstate(marker)
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for entry in source.infolist():
            name = entry.filename
            if name.endswith(".py"):
                name = name.removesuffix(".py") + extension
            target.writestr(name, source.read(entry))
    return out.getvalue()


def with_entry(data: bytes, name: str, content: bytes = b"") -> bytes:
    """A copy of an archive with one more entry, named exactly ``name``."""
    out = io.BytesIO(data)
    with zipfile.ZipFile(out, "a") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        archive.writestr(zipfile.ZipInfo(name), content)
    return out.getvalue()


def with_name_bytes(data: bytes, old: bytes, new: bytes, *, local_only: bool = False) -> bytes:
    """A copy of a zip with an entry name's bytes replaced (same length) in its headers;
    with ``local_only``, in the local header alone."""
    if len(old) != len(new):
        raise ValueError("names must have the same length")
    if not local_only:
        return data.replace(old, new)
    position = data.index(old)
    return data[:position] + new + data[position + len(old) :]


def with_comment(data: bytes, comment: bytes = b"hidden") -> bytes:
    """A copy of a zip with a comment after its end record."""
    out = io.BytesIO(data)
    with zipfile.ZipFile(out, "a") as archive:
        archive.comment = comment
    return out.getvalue()


def with_prefix(data: bytes, prefix: bytes = bytes(64)) -> bytes:
    """A zip with bytes before its first entry (Python's zipfile adjusts; miniz does not)."""
    return prefix + data
