"""What the frontend tells a worker process when it starts it (JSON on the command line)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

__all__ = ["WorkerSettings"]


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker needs; plain values only, so it travels as JSON.

    >>> settings = WorkerSettings(scratch_dir="/tmp/w0")
    >>> WorkerSettings.from_json(settings.to_json()) == settings
    True
    """

    scratch_dir: str
    device: str = "cpu"
    max_archive_bytes: int = 1 << 30
    max_loaded_bytes: int = 4 << 30
    max_tensor_elements: int = 1 << 28
    max_message_bytes: int = 512 << 20
    max_memory_bytes: int = 0
    memory_meter: str = "rss"
    compile: str = "on"
    compile_after: int = 2
    torch_threads: int = 1
    max_threads: int = 1  # a request computing alone may use this many
    allocator: str = "keep"
    op_allowlist: str | None = None
    allow_ops: tuple[str, ...] = field(default_factory=tuple)
    memory_limit_bytes: int = 0
    cpu_seconds: float = 0.0
    open_files: int = 256
    sandbox: bool = True
    log_level: str = "INFO"
    log_format: str = "json"

    def to_json(self) -> str:
        """The settings as one JSON object."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSettings:
        """Settings from :meth:`to_json` output."""
        values = json.loads(text)
        values["allow_ops"] = tuple(values.get("allow_ops", ()))
        return cls(**values)
