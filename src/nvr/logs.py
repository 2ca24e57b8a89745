"""Logging for people, for journald and for log shippers.

One line per event. Under systemd (``JOURNAL_STREAM`` set) each line starts with a ``<N>``
syslog priority so journald files it at the right level; timestamps are then left to journald.
``--log-format json`` writes one JSON object per line instead (for Loki, Vector, Elastic...),
with the ``camera=ID`` context lifted into its own field.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from datetime import UTC, datetime

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


_CAMERA = re.compile(r"\bcamera=([a-z0-9-]+)")


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "camera"?, "error"?}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        doc: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        if (m := _CAMERA.search(message)) is not None:
            doc["camera"] = m[1]
        if record.exc_info and record.exc_info[1] is not None:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party loggers that dump requests (with Authorization headers) at DEBUG/INFO.
    for noisy in ("aiortsp", "rtsp_client", "rtp.session", "zeep", "httpx", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
