"""Model archives: recognized, loaded, content-addressed and cached. No gRPC here."""

from jacserve.server.registry.archive import ArchiveFormat, detect_format
from jacserve.server.registry.loading import (
    InputInfo,
    LoadedModel,
    MethodInfo,
    ParameterInfo,
    load_model,
)
from jacserve.server.registry.registry import ModelInfo, ModelRegistry, model_id_of

__all__ = [
    "ArchiveFormat",
    "InputInfo",
    "LoadedModel",
    "MethodInfo",
    "ModelInfo",
    "ModelRegistry",
    "ParameterInfo",
    "detect_format",
    "load_model",
    "model_id_of",
]
