"""The one archive a worker serves: checked, loaded per device, described.

A worker process is bound to a single archive for its whole life (it is assumed
compromised once it has loaded it), so its registry holds exactly that archive: loaded
on the server's device when the worker starts, and on another device (``options.device``)
when a request asks for it. Requests naming any other model are refused.

>>> import io, torch
>>> buffer = io.BytesIO()
>>> torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), buffer)
>>> registry = ArchiveRegistry(buffer.getvalue())
>>> info = registry.info(registry.model_id)
>>> info.format.value, [m.name for m in info.methods]
('torchscript', ['forward'])
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

import torch

from jacserve.server.engine.compiled import CompiledPrograms
from jacserve.server.errors import FailedPrecondition, ResourceExhausted
from jacserve.server.registry.archive import ArchiveFormat, detect_format
from jacserve.server.registry.loading import LoadedModel, MethodInfo, ParameterInfo, load_model
from jacserve.server.registry.operators import OperatorAllowlist

__all__ = ["ArchiveRegistry", "ModelInfo", "model_id_of"]


@dataclass(frozen=True)
class ModelInfo:
    """Metadata of a registered model."""

    model_id: str
    format: ArchiveFormat
    archive_size_bytes: int
    loaded_size_bytes: int
    methods: tuple[MethodInfo, ...]
    parameters: tuple[ParameterInfo, ...]


def model_id_of(data: bytes) -> str:
    """The model id of an archive: the lowercase hex SHA-256 of its bytes.

    >>> model_id_of(b"")[:16]
    'e3b0c44298fc1c14'
    """
    return hashlib.sha256(data).hexdigest()


class ArchiveRegistry:
    """One archive, checked and loaded on ``device`` at construction. Thread-safe.

    Args:
        data: the archive's bytes.
        max_archive_bytes: cap on its uncompressed size.
        max_loaded_bytes: cap on its loaded size (archive + parameters + buffers), per
            device.
        device: where it is loaded first.
        compile_after: eager Jacobians of one signature before its compiled program is
            requested (0: every request stays eager).
        allowlist: the operators it may call (default: the built-in list).

    Raises:
        InvalidArgument: not a loadable archive, or it calls a refused operator.
        ResourceExhausted: above the caps.
    """

    def __init__(
        self,
        data: bytes,
        *,
        max_archive_bytes: int = 1 << 30,
        max_loaded_bytes: int = 4 << 30,
        device: str = "cpu",
        compile_after: int = 0,
        allowlist: OperatorAllowlist | None = None,
    ) -> None:
        self.model_id = model_id_of(data)
        self._data = data
        self._format = detect_format(data, max_uncompressed_bytes=max_archive_bytes)
        self._max_loaded_bytes = max_loaded_bytes
        self._device = str(torch.device(device))
        self._compile_after = compile_after
        self._allowlist = allowlist or OperatorAllowlist.default()
        self._lock = threading.Lock()
        self._loaded: dict[str, LoadedModel] = {}
        model = self._load(self._device)
        self._info = ModelInfo(
            self.model_id,
            self._format,
            len(data),
            len(data) + model.nbytes,
            model.methods,
            model.parameters_info,
        )

    def _load(self, device: str) -> LoadedModel:
        model = load_model(self._data, self._format, device, self._allowlist)
        size = len(self._data) + model.nbytes
        if size > self._max_loaded_bytes:
            raise ResourceExhausted(
                f"model needs about {size} bytes once loaded, above the server's budget of "
                f"{self._max_loaded_bytes} (--max-loaded-bytes)"
            )
        if self._compile_after:
            model.enable_compilation(compile_after=self._compile_after)
        with self._lock:
            return self._loaded.setdefault(device, model)

    def _check(self, model_id: str) -> None:
        if model_id != self.model_id:
            raise FailedPrecondition(
                f"this worker serves model {self.model_id} only, not {model_id[:80]}"
            )

    def info(self, model_id: str) -> ModelInfo:
        """Metadata of the archive.

        Raises:
            FailedPrecondition: ``model_id`` is another archive's.
        """
        self._check(model_id)
        return self._info

    def compiled_programs(self) -> list[CompiledPrograms]:
        """The compiled programs of the archive on each device it is loaded on."""
        with self._lock:
            models = list(self._loaded.values())
        return [m.compiled_programs for m in models if m.compiled_programs is not None]

    def get(self, model_id: str, device: str | None = None) -> LoadedModel:
        """The model loaded on ``device`` (default: the first one), loading it if needed.

        Raises:
            FailedPrecondition: ``model_id`` is another archive's.
        """
        self._check(model_id)
        key = str(torch.device(device)) if device else self._device
        with self._lock:
            model = self._loaded.get(key)
        return model if model is not None else self._load(key)
