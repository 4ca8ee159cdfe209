"""The model registry: archives by content hash on disk, loaded models in a byte-bounded LRU.

>>> import io, tempfile, torch
>>> buffer = io.BytesIO()
>>> torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), buffer)
>>> registry = ModelRegistry(tempfile.mkdtemp())
>>> info, already_present = registry.add(buffer.getvalue())
>>> registry.get(info.model_id).format.value, already_present
('torchscript', False)
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from jacserve.server.engine.compiled import ProgramCompiler
from jacserve.server.errors import InvalidArgument, NotFound, ResourceExhausted
from jacserve.server.registry.archive import ArchiveFormat, detect_format
from jacserve.server.registry.loading import LoadedModel, MethodInfo, ParameterInfo, load_model
from jacserve.server.registry.operators import OperatorAllowlist

__all__ = ["ModelInfo", "ModelRegistry", "model_id_of"]

_LOG = logging.getLogger(__name__)
_MODEL_ID = re.compile(r"[0-9a-f]{64}")
_SUFFIX = ".archive"


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


class ModelRegistry:
    """Content-addressed store of model archives with a byte-bounded cache of loaded models.

    Archives live in ``directory`` as ``<model id>.archive``; an archive found there is
    loaded on first use (so a restarted server, or another worker process sharing the
    directory, still has it); loaded models are kept in memory, least recently
    used first out, while their estimated size (archive + parameters + buffers) stays
    under ``max_loaded_bytes``. All methods are thread-safe.

    Args:
        directory: where archives are stored; created if missing.
        max_archive_bytes: largest archive accepted, compressed or uncompressed.
        max_loaded_bytes: memory budget of the loaded-model cache.
        device: where models are loaded unless :meth:`get` names another device.
        compiler: where compiled Jacobian programs are built; ``None`` keeps every
            request eager.
        compile_after: eager Jacobians of one signature before its program is built.
        allowlist: the operators a model may call (default: the built-in list).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_archive_bytes: int = 1 << 30,
        max_loaded_bytes: int = 4 << 30,
        device: str = "cpu",
        compiler: ProgramCompiler | None = None,
        compile_after: int = 2,
        allowlist: OperatorAllowlist | None = None,
    ) -> None:
        self._directory = pathlib.Path(directory)
        self._directory.mkdir(parents=True, exist_ok=True)
        self._max_archive_bytes = max_archive_bytes
        self._max_loaded_bytes = max_loaded_bytes
        self._device = str(torch.device(device))
        self._compiler = compiler
        self._compile_after = compile_after
        self._lock = threading.Lock()
        self._infos: dict[str, ModelInfo] = {}
        self._loaded: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
        self._loaded_bytes = 0
        self._allowlist = allowlist or OperatorAllowlist.default()

    @property
    def max_archive_bytes(self) -> int:
        """Largest archive the registry accepts."""
        return self._max_archive_bytes

    def add(self, data: bytes, *, expected_id: str = "") -> tuple[ModelInfo, bool]:
        """Register an archive; returns its info and whether it was already registered.

        Raises:
            InvalidArgument: not a loadable TorchScript or torch.export archive, or
                ``expected_id`` does not match the bytes.
            ResourceExhausted: the archive or its loaded form is above the caps.
        """
        if len(data) > self._max_archive_bytes:
            raise ResourceExhausted(
                f"archive is {len(data)} bytes, above the server's limit of "
                f"{self._max_archive_bytes} (--max-archive-bytes)"
            )
        model_id = model_id_of(data)
        if expected_id and expected_id != model_id:
            raise InvalidArgument(
                f"archive bytes hash to {model_id}, not the expected {expected_id}; "
                "the upload was corrupted or truncated, send it again"
            )
        with self._lock:
            if model_id in self._infos:
                return self._infos[model_id], True
        fmt = detect_format(data, max_uncompressed_bytes=self._max_archive_bytes)
        model = load_model(data, fmt, self._device, self._allowlist)
        size = len(data) + model.nbytes
        if size > self._max_loaded_bytes:
            raise ResourceExhausted(
                f"model needs about {size} bytes once loaded, above the server's cache budget of "
                f"{self._max_loaded_bytes} (--max-loaded-bytes)"
            )
        info = ModelInfo(model_id, fmt, len(data), size, model.methods, model.parameters_info)
        path = self._directory / f"{model_id}{_SUFFIX}"
        if not path.exists():
            partial = path.with_suffix(f".partial-{threading.get_ident()}")
            partial.write_bytes(data)
            partial.replace(path)
        with self._lock:
            if model_id in self._infos:
                return self._infos[model_id], True
            self._infos[model_id] = info
            self._cache((model_id, self._device), model)
        return info, False

    def _cache(self, key: tuple[str, str], model: LoadedModel) -> None:
        """Insert into the LRU and evict the least recently used; caller holds the lock."""
        if self._compiler is not None and model.compiled_programs is None:
            model.enable_compilation(self._compiler, compile_after=self._compile_after)
        self._loaded[key] = model
        self._loaded_bytes += self._infos[key[0]].loaded_size_bytes
        while self._loaded_bytes > self._max_loaded_bytes and len(self._loaded) > 1:
            evicted, _ = self._loaded.popitem(last=False)
            self._loaded_bytes -= self._infos[evicted[0]].loaded_size_bytes
            _LOG.info("evicted model %s on %s from the loaded-model cache", *evicted)

    def _known(self, model_id: str) -> ModelInfo:
        """The info of a registered or stored model; caller holds the lock."""
        if not _MODEL_ID.fullmatch(model_id):
            raise InvalidArgument(
                f"model_id must be the 64 lowercase hex characters returned by UploadModel; "
                f"got {model_id!r}"
            )
        info = self._infos.get(model_id)
        if info is None and (self._directory / f"{model_id}{_SUFFIX}").exists():
            self._lock.release()  # loading takes long: not under the lock
            try:
                info = self.add((self._directory / f"{model_id}{_SUFFIX}").read_bytes())[0]
            finally:
                self._lock.acquire()
        if info is None:
            raise NotFound(
                f"model {model_id} is not registered; upload it first (UploadModel / Client.upload)"
            )
        return info

    def info(self, model_id: str) -> ModelInfo:
        """Metadata of a registered model.

        Raises:
            InvalidArgument: malformed id. NotFound: unknown id.

        >>> import tempfile
        >>> ModelRegistry(tempfile.mkdtemp()).info("0" * 64)  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        NotFound: model 000… is not registered; upload it first
        """
        with self._lock:
            return self._known(model_id)

    def list(self) -> list[ModelInfo]:
        """Metadata of every registered model, sorted by id.

        >>> import tempfile
        >>> ModelRegistry(tempfile.mkdtemp()).list()
        []
        """
        with self._lock:
            return [self._infos[k] for k in sorted(self._infos)]

    def delete(self, model_id: str) -> None:
        """Forget a model and remove its archive.

        Raises:
            InvalidArgument: malformed id. NotFound: unknown id.
        """
        with self._lock:
            info = self._known(model_id)
            del self._infos[model_id]
            for key in [k for k in self._loaded if k[0] == model_id]:
                del self._loaded[key]
                self._loaded_bytes -= info.loaded_size_bytes
        (self._directory / f"{model_id}{_SUFFIX}").unlink(missing_ok=True)

    def get(self, model_id: str, device: str | None = None) -> LoadedModel:
        """The model loaded on ``device`` (default: the registry's), loading it if needed.

        Raises:
            InvalidArgument: malformed id. NotFound: unknown id.
        """
        key = (model_id, str(torch.device(device)) if device else self._device)
        with self._lock:
            info = self._known(model_id)
            model = self._loaded.get(key)
            if model is not None:
                self._loaded.move_to_end(key)
                return model
        data = (self._directory / f"{model_id}{_SUFFIX}").read_bytes()
        model = load_model(data, info.format, key[1], self._allowlist)
        with self._lock:
            if model_id in self._infos and key not in self._loaded:
                self._cache(key, model)
            return self._loaded.get(key, model)

    def cache_stats(self) -> tuple[int, int]:
        """Number of loaded models and their estimated bytes.

        >>> import tempfile
        >>> ModelRegistry(tempfile.mkdtemp()).cache_stats()
        (0, 0)
        """
        with self._lock:
            return len(self._loaded), self._loaded_bytes
