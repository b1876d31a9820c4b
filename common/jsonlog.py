"""JSON-lines request logs shared by edge and cloud (stdlib logging).

Each request writes one line ``{"ts": ..., "side": "edge"|"cloud", "event": "request",
"request_id": ..., ...}``; the same ``request_id`` on both sides lets the two logs join.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (UTC ISO-8601 with ms), level, logger, msg and the ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        out: dict[str, Any] = {"ts": ts, "level": record.levelname.lower(), "logger": record.name}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key != "fields" and not key.startswith("_"):
                out[key] = value
        msg = record.getMessage()
        if msg:
            out["msg"] = msg
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=_default, separators=(",", ":"))


def _default(obj: object) -> object:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _add_json_handler(logger: logging.Logger, destination: str | None, stream: Any) -> logging.Logger:
    """Give ``logger`` one JSON-lines handler (a file path, ``stream``, or stderr) at INFO, not propagating."""
    if destination:
        handler: logging.Handler = logging.FileHandler(destination, encoding="utf-8")
    else:
        handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def json_logger(name: str, destination: str | None = None, stream: Any = None) -> logging.Logger:
    """A logger writing JSON lines to ``destination`` (a file path), ``stream``, or stderr.

    Calling it again with the same name replaces its handlers (tests start several servers).
    """
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    return _add_json_handler(logger, destination, stream)


def private_logger(
    name: str, destination: str | None = None, stream: Any = None, enabled: bool = True
) -> logging.Logger:
    """Like `json_logger`, but a logger object of its own, outside ``logging``'s registry.

    Several servers in one process (tests, the demo) then keep separate handlers under one name.
    ``enabled=False`` gives a logger that drops everything without formatting it.
    """
    logger = logging.Logger(name)
    logger.propagate = False
    if not enabled:
        logger.setLevel(logging.CRITICAL + 1)
        return logger
    return _add_json_handler(logger, destination, stream)


def silent_logger(name: str) -> logging.Logger:
    """A logger that drops everything (request logs turned off)."""
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger
