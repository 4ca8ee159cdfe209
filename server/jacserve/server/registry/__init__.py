"""Model archives: recognized, loaded, content-addressed and cached. No gRPC here."""

from jacserve.server.registry.archive import ArchiveFormat, detect_format
from jacserve.server.registry.loading import (
    InputInfo,
    LoadedModel,
    MethodInfo,
    ParameterInfo,
    load_model,
)
from jacserve.server.registry.operators import OperatorAllowlist
from jacserve.server.registry.registry import ModelInfo, ModelRegistry, model_id_of
from jacserve.server.registry.store import ArchiveStore, check_model_id

__all__ = [
    "ArchiveFormat",
    "ArchiveStore",
    "InputInfo",
    "LoadedModel",
    "MethodInfo",
    "ModelInfo",
    "ModelRegistry",
    "OperatorAllowlist",
    "ParameterInfo",
    "check_model_id",
    "detect_format",
    "load_model",
    "model_id_of",
]
