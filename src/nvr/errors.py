"""The project's exception tree.

Foreign exceptions (aiortsp, PyAV, sqlite3, OSError) are translated into these once,
at the boundary where they are caught; the rest of the code only sees ``NvrError``.
No message ever carries a password: URLs are passed through ``redact_url`` first.
"""

from __future__ import annotations


class NvrError(Exception):
    """Root of every error the recorder raises on purpose."""


class ConfigError(NvrError):
    """The configuration file is missing, unreadable or invalid."""


class CameraError(NvrError):
    """The camera misbehaved: refused us, went away, or sent bytes we cannot use."""


class CameraConnectError(CameraError):
    """The camera could not be reached (DNS, refused, timeout)."""


class CameraAuthError(CameraError):
    """The camera rejected the credentials."""


class CameraProtocolError(CameraError):
    """The camera answered with something RTSP/SDP/RTP we cannot use."""


class CameraClosedError(CameraError):
    """The camera closed the session or the connection."""


class CameraStalledError(CameraError):
    """No frame arrived within the stall timeout."""


class DepacketizeError(CameraError):
    """An RTP payload could not be turned into media; the depacketizer resyncs on its own."""


class StorageError(NvrError):
    """Segment files or the index could not be written or read."""


class StorageFullError(StorageError):
    """The storage volume has no room left."""


class CameraClockJumpError(CameraError):
    """The camera's media clock stepped or drifted away from ours: the run must end here."""


class DiscoveryError(NvrError):
    """WS-Discovery failed: a target the user gave is invalid, or a datagram is unusable."""
