"""What the frontend remembers of stored archives: their descriptions and quarantine.

Beside each checked archive ``<id>.archive`` the catalog keeps ``<id>.info``, the
serialized ``ModelInfo`` its worker reported, so that start-up and ListModels never need
to load an archive. An archive whose loading crashed, hung or was refused is moved to
``quarantine/`` with the reason, and is never loaded automatically again.

>>> import tempfile
>>> catalog = ModelCatalog(tempfile.mkdtemp())
>>> catalog.quarantined("a" * 64) is None
True
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import threading

from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = ["ModelCatalog"]

_INFO, _REASON, _ARCHIVE = ".info", ".reason", ".archive"


class ModelCatalog:
    """Descriptions and quarantine of the archives in ``directory``. Thread-safe.

    Args:
        directory: the model store's folder.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._directory = pathlib.Path(directory)
        self._quarantine = self._directory / "quarantine"
        self._lock = threading.Lock()
        self._infos: dict[str, pb.ModelInfo] = {}
        for path in self._directory.glob(f"*{_INFO}"):
            model_id = path.name.removesuffix(_INFO)
            if (self._directory / f"{model_id}{_ARCHIVE}").exists():
                try:
                    self._infos[model_id] = pb.ModelInfo.FromString(path.read_bytes())
                except Exception:  # a damaged description: described again on first use
                    path.unlink(missing_ok=True)
            else:
                path.unlink(missing_ok=True)

    def get(self, model_id: str) -> pb.ModelInfo | None:
        """The description of a checked archive, if known."""
        with self._lock:
            return self._infos.get(model_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._infos)

    def all(self) -> list[pb.ModelInfo]:
        """Every known description, sorted by model id."""
        with self._lock:
            return [self._infos[k] for k in sorted(self._infos)]

    def put(self, model_id: str, info: pb.ModelInfo) -> None:
        """Remember a description (on disk too, for restarts)."""
        path = self._directory / f"{model_id}{_INFO}"
        partial = path.with_suffix(f".partial-{threading.get_ident()}")
        partial.write_bytes(info.SerializeToString())
        partial.replace(path)
        with self._lock:
            self._infos[model_id] = info

    def forget(self, model_id: str) -> None:
        """Drop a description (the archive was deleted)."""
        with self._lock:
            self._infos.pop(model_id, None)
        (self._directory / f"{model_id}{_INFO}").unlink(missing_ok=True)

    def quarantine(self, model_id: str, reason: str, *, keep_archive: bool = True) -> None:
        """Mark ``model_id`` bad with ``reason``: it is never loaded again automatically.
        With ``keep_archive`` its stored archive is moved aside for an operator to
        inspect (and delete with DeleteModel); without, only the mark remains."""
        self.forget(model_id)
        self._quarantine.mkdir(exist_ok=True)
        (self._quarantine / f"{model_id}{_REASON}").write_text(reason[:4000])
        if keep_archive:
            archive = self._directory / f"{model_id}{_ARCHIVE}"
            with contextlib.suppress(FileNotFoundError):
                archive.replace(self._quarantine / f"{model_id}{_ARCHIVE}")

    def quarantined(self, model_id: str) -> str | None:
        """Why ``model_id`` is quarantined, or ``None``."""
        try:
            return (self._quarantine / f"{model_id}{_REASON}").read_text()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def release(self, model_id: str) -> None:
        """Forget a quarantine (its archive is deleted)."""
        for suffix in (_REASON, _ARCHIVE):
            (self._quarantine / f"{model_id}{suffix}").unlink(missing_ok=True)
