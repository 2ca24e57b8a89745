"""The writer thread: PyAV muxing and file I/O, off the event loop.

Each camera has one thread fed by a bounded queue. The event loop never blocks on it:
``submit`` either takes the command at once or reports the queue full, and the caller then
ends the run (``writer_behind``) instead of dropping frames in the middle of a segment.
Results come back as ``concurrent.futures.Future`` objects the loop can await.
"""

from __future__ import annotations

import concurrent.futures
import errno
import logging
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

from nvr.errors import StorageError, StorageFullError
from nvr.media import AudioFrame, VideoParameters
from nvr.storage.model import SegmentFile
from nvr.storage.segmenter import AudioTrackSpec, SegmentMuxer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OpenSegment:
    path: Path
    video: VideoParameters
    audio: AudioTrackSpec | None
    done: concurrent.futures.Future[SegmentFile] = field(
        default_factory=concurrent.futures.Future, compare=False
    )


@dataclass(frozen=True, slots=True)
class WriteVideo:
    nal_units: tuple[bytes, ...]  # one access unit, without start codes
    pts_90k: int  # relative to the segment start
    duration_90k: int
    is_keyframe: bool


@dataclass(frozen=True, slots=True)
class WriteAudio:
    frame: AudioFrame
    pts: int  # audio clock units relative to the segment start


@dataclass(frozen=True, slots=True)
class CloseSegment:
    pass


_Command = OpenSegment | WriteVideo | WriteAudio | CloseSegment | None


def _translate(path: Path, exc: BaseException) -> StorageError:
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFullError(f"{path}: no space left on the storage volume")
    return StorageError(f"{path}: {type(exc).__name__}: {exc}")


class SegmentWriter:
    """One camera's writer thread. Commands run in order; a failed segment fails its future."""

    def __init__(self, name: str, maxsize: int) -> None:
        # SimpleQueue (C, lock-free for one producer) with the bound checked by hand: the event
        # loop is the only producer, so qsize() cannot grow between the check and the put.
        self._queue: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._maxsize = maxsize
        self._thread = threading.Thread(target=self._main, name=f"writer-{name}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Commands waiting for the thread (frames, opens and closes)."""
        return self._queue.qsize()

    @property
    def capacity(self) -> int:
        """Frames the queue takes before ``submit`` refuses."""
        return self._maxsize

    def submit(self, cmd: WriteVideo | WriteAudio) -> bool:
        """Queue a frame; False when the queue is full (the disk is not keeping up)."""
        if self._queue.qsize() >= self._maxsize:
            return False
        self._queue.put(cmd)
        return True

    def control(self, cmd: OpenSegment | CloseSegment) -> None:
        """Queue an open or a close: always taken (at most two per segment), so a full queue
        of frames can still be closed cleanly behind them."""
        self._queue.put(cmd)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish what is queued and end the thread (blocking: call from a thread)."""
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _main(self) -> None:
        muxer: SegmentMuxer | None = None
        current: OpenSegment | None = None
        failed = False
        while True:
            cmd = self._queue.get()
            if cmd is None:
                if muxer is not None:
                    muxer.abort()
                return
            try:
                if isinstance(cmd, OpenSegment):
                    if muxer is not None:
                        muxer.abort()
                    muxer, current, failed = None, cmd, False
                    cmd.path.parent.mkdir(parents=True, exist_ok=True)
                    muxer = SegmentMuxer(cmd.path, cmd.video, cmd.audio)
                elif failed or muxer is None or current is None:
                    continue  # the segment already failed; its future says why
                elif isinstance(cmd, WriteVideo):
                    muxer.write_video(cmd.nal_units, cmd.pts_90k, cmd.duration_90k, cmd.is_keyframe)
                elif isinstance(cmd, WriteAudio):
                    muxer.write_audio(cmd.frame, cmd.pts)
                else:
                    facts = muxer.close()
                    muxer = None
                    current.done.set_result(facts)
            except Exception as exc:
                target = cmd if isinstance(cmd, OpenSegment) else current
                path = target.path if target is not None else Path("?")
                err = _translate(path, exc)
                log.error("writer: %s", err)
                if muxer is not None:
                    try:
                        muxer.abort()
                    except Exception:
                        log.exception("writer: abort after error failed")
                muxer, failed = None, True
                if target is not None and not target.done.done():
                    target.done.set_exception(err)
