"""Network video recorder: RTSP in, fragmented MP4 out, indexed in SQLite."""

__version__ = "0.1.0"
