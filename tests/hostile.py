"""Hostile and broken archives for the attack tests, each built here from real torch output.

Every exploit writes a marker file if it ever runs; the tests check that it never does.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile

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
                target.writestr(entry.filename, change[matches[0]])
        root = source.namelist()[0].split("/", 1)[0]
        for name, content in (add or {}).items():
            target.writestr(f"{root}/{name}", content)
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
