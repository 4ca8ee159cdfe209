"""Model archives: recognized, loaded, content-addressed and cached. No gRPC here.

The frontend uses only the torch-free parts (``archive``, ``store``); the names that
need torch (loading, the registry of loaded models, the operator check) are imported on
first use, so that importing this package does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from jacserve.server.registry.archive import ArchiveFormat, detect_format
from jacserve.server.registry.store import ArchiveStore, check_model_id

if TYPE_CHECKING:
    from jacserve.server.registry.loading import (
        InputInfo,
        LoadedModel,
        MethodInfo,
        ParameterInfo,
        load_model,
    )
    from jacserve.server.registry.operators import OperatorAllowlist
    from jacserve.server.registry.registry import ArchiveRegistry, ModelInfo, model_id_of

_LAZY = {
    "InputInfo": "loading",
    "LoadedModel": "loading",
    "MethodInfo": "loading",
    "ParameterInfo": "loading",
    "load_model": "loading",
    "OperatorAllowlist": "operators",
    "ModelInfo": "registry",
    "ArchiveRegistry": "registry",
    "model_id_of": "registry",
}

__all__ = [
    "ArchiveFormat",
    "ArchiveRegistry",
    "ArchiveStore",
    "InputInfo",
    "LoadedModel",
    "MethodInfo",
    "ModelInfo",
    "OperatorAllowlist",
    "ParameterInfo",
    "check_model_id",
    "detect_format",
    "load_model",
    "model_id_of",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
