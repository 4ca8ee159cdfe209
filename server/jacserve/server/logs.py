"""Structured logs: one JSON object per line, with the fields a record carries in ``extra``.

>>> import logging, io
>>> stream = io.StringIO()
>>> handler = logging.StreamHandler(stream)
>>> handler.setFormatter(JsonFormatter())
>>> log = logging.getLogger("jacserve.example")
>>> log.addHandler(handler)
>>> log.warning("rpc finished", extra={"request_id": "abc", "code": "OK"})
>>> import json; record = json.loads(stream.getvalue())
>>> record["message"], record["request_id"], record["code"]
('rpc finished', 'abc', 'OK')
"""

from __future__ import annotations

import json
import logging
import os

__all__ = ["JsonFormatter", "configure_logging"]

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Format records as JSON: time, level, logger, message, pid, then every extra field."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, fmt: str = "json") -> None:
    """Send the root logger's records to stderr as JSON lines (``fmt="json"``) or text."""
    handler = logging.StreamHandler()
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = __import__("time").gmtime
    else:
        formatter = logging.Formatter(
            f"%(asctime)s %(levelname)s %(name)s[{os.getpid()}] %(message)s"
        )
    handler.setFormatter(formatter)
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
