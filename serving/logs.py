"""Structured logging: one JSON object per line on stderr, with the `extra={...}` fields of each call.

Configured once by the CLI; libraries only call `logging.getLogger(__name__)`.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # kafka-python logs every reconnect at ERROR with tracebacks; keep its own noise at WARNING+
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))
    # its selector warns whenever a loaded CPU delays its event loop by >100 ms: not actionable
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
    # a socket read racing the client's own close() reports an error on a transport already closed
    logging.getLogger("kafka.net.transport").addFilter(_not_after_close)


def _not_after_close(record: logging.LogRecord) -> bool:
    return "(closed)>" not in record.getMessage()
