"""Logging for people and for journald.

One line per event. Under systemd (``JOURNAL_STREAM`` set) each line starts with a ``<N>``
syslog priority so journald files it at the right level; timestamps are then left to journald.
"""

from __future__ import annotations

import logging
import os
import sys

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


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
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
