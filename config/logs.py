"""How the process writes its lines: `LOG_LEVEL`, and `LOG_FORMAT` text or JSON.

With ``json`` every line the process writes to stdout or stderr is one JSON
object with ``time``, ``level``, ``logger`` and ``message``: our own lines, the
web server's (uvicorn: it is started without a logging configuration of its
own, so its records come here), the SDK's (structured records: their fields go
beside the message), Python's warnings, and an uncaught exception. What the
agent announces at start (`announce`) goes the same way. Log collectors can
then read every line without a parser per source.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Keys of an SDK (structlog) event that are not fields of its own.
_STRUCTLOG_KEYS = {"event", "level", "logger", "timestamp", "log_level"}


class JsonLines(logging.Formatter):
    """One JSON object per record: time, level, logger, message (and what else it carries)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if isinstance(record.msg, Mapping):
            # The SDK hands stdlib logging structlog's event dict as the message.
            line["message"] = str(record.msg.get("event", ""))
            fields = {
                key: value
                for key, value in record.msg.items()
                if key not in _STRUCTLOG_KEYS and not str(key).startswith("_")
            }
            if fields:
                line["fields"] = fields
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(level: str, log_format: LogFormat) -> None:
    """Every logger of the process (ours, uvicorn's, the SDK's) to stderr, in ``log_format``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "signalwire"):
        # Whatever handlers an import gave them, their lines go through the root's.
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    if log_format == "json":
        sys.excepthook = _log_uncaught


def announce(message: str, log_format: LogFormat, *, problem: bool = False) -> None:
    """A line for the person running the agent: on stdout (stderr for a ``problem``),
    as it is or as a JSON object."""
    stream = sys.stderr if problem else sys.stdout
    if log_format == "json":
        level = logging.ERROR if problem else logging.INFO
        record = logging.LogRecord("mfa", level, __file__, 0, message, None, None)
        message = JsonLines().format(record)
    print(message, file=stream, flush=True)


def _log_uncaught(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
    logging.getLogger("mfa").critical("the agent stopped on an error", exc_info=(kind, error, trace))
