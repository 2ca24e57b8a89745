"""Drive tools/fakecam.py (the simulated camera) from tests running under the venv Python.

    with FakeCam().start(auth="digest", user="admin", password="p@ss") as cam:
        url = cam.url("/file/h264", "admin", "p@ss")
        cam.stall(3)
        cam.stats()["/file/h264"].rtp_packets

Also here: `make_clips` (the looped source clips, cached in a directory), a minimal raw RTSP
reader over TCP (`RawRtspReader`) for checking what goes on the wire independently of our own
ingest code, and small RFC 6184 / RFC 7798 depacketizers to compare NAL units with the files.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, Self
from urllib.parse import quote, urlsplit

from nvr.storage.nal_framing import annexb_nal_units

REPO_ROOT = Path(__file__).resolve().parents[2]
FAKECAM_SCRIPT = REPO_ROOT / "tools" / "fakecam.py"
SYSTEM_PYTHON = "/usr/bin/python3"  # PyGObject is a Debian package, not in the venv
LOOPBACK = "127.0.0.1"

AuthMethod = Literal["none", "basic", "digest"]


class FakeCamError(RuntimeError):
    """The simulated camera failed to start or to answer its control API."""


def fakecam_unavailable_reason() -> str | None:
    """Why the fake camera cannot run here (None when it can): for pytest.skip."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found"
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        return "ffmpeg/ffprobe not installed"
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0')"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        return "python3-gi / gir1.2-gst-rtsp-server-1.0 not installed"
    return None


def make_clips(
    media_dir: Path, width: int = 640, height: int = 360, fps: int = 25
) -> dict[str, Path]:
    """Generate the looped MPEG-TS clips into media_dir unless already there (cache-friendly).

    Returns clip name ("h264", "h265", "h264-aac", "h265-aac") -> path. The recipe lives in
    tools/fakecam.py only, so the camera and the tests always agree on it.
    """
    size = ["--width", str(width), "--height", str(height), "--fps", str(fps)]
    cmd = [SYSTEM_PYTHON, str(FAKECAM_SCRIPT), "--make-clips", "--media-dir", str(media_dir)]
    out = subprocess.run(
        [*cmd, *size], check=True, capture_output=True, text=True, timeout=300
    ).stdout
    return {name: Path(path) for name, path in json.loads(out).items()}


@dataclass(frozen=True, slots=True)
class MountStats:
    clients: int  # pipelines currently prepared for this mount (one per client session)
    rtp_packets: int  # RTP packets sent so far, all streams, packets dropped by a stall excluded
    video_access_units: int  # buffers that entered the video payloader so far


class FakeCam:
    """One tools/fakecam.py process. Use start() (returns self) and stop(), or `with`."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None
        self.rtsp_port = 0
        self.control_port = 0
        self.mounts: list[str] = []
        self.clips: dict[str, Path] = {}  # clip name -> the MPEG-TS file a /file mount loops
        self.auth: AuthMethod = "none"

    def start(
        self,
        auth: AuthMethod = "none",
        user: str = "admin",
        password: str = "admin",
        media_dir: Path | None = None,
        *,
        width: int = 640,
        height: int = 360,
        fps: int = 25,
        timeout_s: float = 60.0,
    ) -> Self:
        if self._proc is not None:
            raise FakeCamError("already started")
        if media_dir is None:
            media_dir = Path(os.environ.get("NVR_FAKECAM_MEDIA", "/tmp/nvr-fakecam-media"))
        cmd = [
            SYSTEM_PYTHON, str(FAKECAM_SCRIPT), "--rtsp-port", "0", "--control-port", "0",
            "--auth", auth, "--user", user, "--password", password,
            "--media-dir", str(media_dir),
            "--width", str(width), "--height", str(height), "--fps", str(fps),
            "--quit-on-stdin-eof",
        ]  # fmt: skip
        self._stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in stop)
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,  # closed when we exit, however we exit: the camera follows
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            start_new_session=True,
        )
        self.auth = auth
        try:
            self._wait_ready(time.monotonic() + timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        stdout = self._proc.stdout

        def pump() -> None:  # readline blocks, so it runs in a thread; the wait keeps a deadline
            for line in stdout:
                lines.put(line)
            lines.put("")

        threading.Thread(target=pump, name="fakecam-stdout", daemon=True).start()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FakeCamError(f"fakecam not ready in time; stderr: {self._stderr_tail()}")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line == "":
                raise FakeCamError(
                    f"fakecam exited ({self._proc.wait()}) before ready; "
                    f"stderr: {self._stderr_tail()}"
                )
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict) and msg.get("ready") is True:
                self.rtsp_port = int(msg["rtsp_port"])
                self.control_port = int(msg["control_port"])
                self.mounts = [str(m) for m in msg["mounts"]]
                self.clips = {str(k): Path(v) for k, v in msg["clips"].items()}
                return

    def _stderr_tail(self, limit: int = 2000) -> str:
        if self._stderr is None or self._stderr.closed:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read()[-limit:]

    # --- addresses -------------------------------------------------------------------------

    def url(self, mount: str, user: str | None = None, password: str | None = None) -> str:
        """rtsp://[user[:password]@]127.0.0.1:port/mount, credentials percent-encoded."""
        userinfo = ""
        if user is not None:
            userinfo = quote(user, safe="")
            if password is not None:
                userinfo += ":" + quote(password, safe="")
            userinfo += "@"
        return f"rtsp://{userinfo}{LOOPBACK}:{self.rtsp_port}/{mount.lstrip('/')}"

    # --- control API -----------------------------------------------------------------------

    def _control(self, method: str, path: str) -> dict[str, object]:
        if self.control_port == 0:
            raise FakeCamError("not started")
        req = urllib.request.Request(
            f"http://{LOOPBACK}:{self.control_port}{path}",
            method=method,
            data=b"" if method == "POST" else None,
        )
        with urllib.request.urlopen(req, timeout=15) as resp:
            body = json.loads(resp.read())
        if not isinstance(body, dict):
            raise FakeCamError(f"unexpected control answer {body!r}")
        return body

    def drop(self) -> int:
        """Close every client connection now; returns how many were closed."""
        dropped = self._control("POST", "/drop")["dropped"]
        assert isinstance(dropped, int)
        return dropped

    def stall(self, seconds: float) -> None:
        """Drop all RTP packets of every running media for `seconds`; connections stay open."""
        self._control("POST", f"/stall?seconds={seconds}")

    def stats(self) -> dict[str, MountStats]:
        mounts = self._control("GET", "/stats")["mounts"]
        assert isinstance(mounts, dict)
        return {
            path: MountStats(int(s["clients"]), int(s["rtp_packets"]), int(s["video_access_units"]))
            for path, s in mounts.items()
        }

    def quit(self) -> None:
        """Ask the process to stop itself through the control API."""
        self._control("POST", "/quit")

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise FakeCamError("not started")
        return self._proc.pid

    def wait(self, timeout_s: float) -> int:
        """Wait for the process to exit by itself (after quit()); its exit code."""
        if self._proc is None:
            raise FakeCamError("not started")
        return self._proc.wait(timeout=timeout_s)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, wait, SIGKILL if it hangs; the exit code (None if never started)."""
        proc, self._proc = self._proc, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=timeout_s)
            code = proc.returncode
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self.control_port = 0
        return code

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- a minimal raw RTSP reader (TCP interleaved), independent of nvr.ingest -----------------


class RtspStatusError(Exception):
    def __init__(self, method: str, status: int, reason: str) -> None:
        super().__init__(f"{method} failed: {status} {reason}")
        self.status = status


@dataclass(frozen=True, slots=True)
class RtpPacket:
    channel: int  # interleaved channel: 2*i for stream i's RTP
    seq: int
    timestamp: int
    marker: bool
    payload_type: int
    payload: bytes
    recv_mono_ns: int


@dataclass(frozen=True, slots=True)
class SdpStream:
    media: str  # "video" / "audio"
    encoding: str  # e.g. "H264", "H265", "MPEG4-GENERIC", "PCMA"
    clock_rate: int
    control_url: str


class RawRtspReader:
    """DESCRIBE, SETUP every stream over TCP, PLAY with `Range: npt=0.000-`, then read RTP."""

    def __init__(
        self,
        url: str,
        user: str | None = None,
        password: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self._user, self._password = user, password
        self._sock = socket.create_connection(
            (urlsplit(url).hostname or LOOPBACK, urlsplit(url).port or 554), timeout=timeout_s
        )
        self._buf = b""
        self._cseq = 0
        self._auth_challenge: dict[str, str] | None = None
        self.auth_scheme: str | None = None  # "basic" / "digest" once the server asked for it
        self._session: str | None = None
        self.streams: list[SdpStream] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def play(self) -> None:
        headers, body = self.request("DESCRIBE", self.url, {"Accept": "application/sdp"})
        base = headers.get("content-base", self.url)
        self.streams = _parse_sdp(body.decode(), base)
        for i, stream in enumerate(self.streams):
            hdrs = {"Transport": f"RTP/AVP/TCP;unicast;interleaved={2 * i}-{2 * i + 1}"}
            headers, _ = self.request("SETUP", stream.control_url, hdrs)
            self._session = headers["session"].split(";")[0]
        self.request("PLAY", self.url, {"Range": "npt=0.000-"})

    def request(
        self, method: str, url: str, extra: dict[str, str] | None = None
    ) -> tuple[dict[str, str], bytes]:
        for _attempt in range(2):
            self._cseq += 1
            hdrs = {"CSeq": str(self._cseq), "User-Agent": "nvr-test-raw", **(extra or {})}
            if self._session:
                hdrs["Session"] = self._session
            auth = self._authorization(method, url)
            if auth:
                hdrs["Authorization"] = auth
            msg = f"{method} {url} RTSP/1.0\r\n"
            msg += "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
            self._sock.sendall(msg.encode())
            status, reason, headers, body = self._read_response()
            if status == 401 and self._auth_challenge is None:
                self._auth_challenge = _parse_challenge(headers.get("www-authenticate", ""))
                self.auth_scheme = self._auth_challenge["scheme"]
                if self._user is not None:
                    continue
            if status != 200:
                raise RtspStatusError(method, status, reason)
            return headers, body
        raise RtspStatusError(method, 401, "Unauthorized")

    def _authorization(self, method: str, url: str) -> str | None:
        ch, user, password = self._auth_challenge, self._user, self._password or ""
        if ch is None or user is None:
            return None
        if ch["scheme"] == "basic":
            return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

        def md5(text: str) -> str:
            return hashlib.md5(text.encode()).hexdigest()

        ha1 = md5(f"{user}:{ch['realm']}:{password}")
        response = md5(f"{ha1}:{ch['nonce']}:{md5(f'{method}:{url}')}")
        return (
            f'Digest username="{user}", realm="{ch["realm"]}", nonce="{ch["nonce"]}", '
            f'uri="{url}", response="{response}"'
        )

    def _fill(self, n: int) -> None:
        while len(self._buf) < n:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed by the server")
            self._buf += chunk

    def _read_response(self) -> tuple[int, str, dict[str, str], bytes]:
        while True:
            self._fill(1)
            if self._buf[0] == 0x24:  # interleaved data before the response: skip it
                self._fill(4)
                self._fill(4 + struct.unpack(">H", self._buf[2:4])[0])
                self._buf = self._buf[4 + struct.unpack(">H", self._buf[2:4])[0] :]
                continue
            while b"\r\n\r\n" not in self._buf:
                self._fill(len(self._buf) + 1)
            head, self._buf = self._buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            _version, status, reason = [*lines[0].split(" ", 2), ""][:3]
            headers = {}
            for line in lines[1:]:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            self._fill(length)
            body, self._buf = self._buf[:length], self._buf[length:]
            return int(status), reason, headers, body

    def read_packet(self) -> RtpPacket | None:
        """Next RTP packet (RTCP skipped); None when the server closed the connection.

        Raises TimeoutError when nothing arrives within the socket timeout.
        """
        while True:
            try:
                self._fill(4)
                if self._buf[0] != 0x24:
                    self._read_response()  # a stray RTSP message; ignore it
                    continue
                channel, length = self._buf[1], struct.unpack(">H", self._buf[2:4])[0]
                self._fill(4 + length)
            except (EOFError, ConnectionResetError):
                return None
            data, self._buf = self._buf[4 : 4 + length], self._buf[4 + length :]
            if channel % 2 == 1 or len(data) < 12:
                continue  # RTCP
            csrc_len = 4 * (data[0] & 0x0F)
            offset = 12 + csrc_len
            if data[0] & 0x10:  # header extension
                offset += 4 + 4 * struct.unpack(">H", data[offset + 2 : offset + 4])[0]
            end = len(data) - (data[-1] if data[0] & 0x20 else 0)
            return RtpPacket(
                channel=channel,
                seq=struct.unpack(">H", data[2:4])[0],
                timestamp=struct.unpack(">I", data[4:8])[0],
                marker=bool(data[1] & 0x80),
                payload_type=data[1] & 0x7F,
                payload=data[offset:end],
                recv_mono_ns=time.monotonic_ns(),
            )


def _parse_challenge(header: str) -> dict[str, str]:
    scheme, _, rest = header.partition(" ")
    fields = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return {"scheme": scheme.lower(), **fields}


def _parse_sdp(sdp: str, base: str) -> list[SdpStream]:
    streams: list[SdpStream] = []
    media, encoding, clock, control = "", "", 0, ""

    def flush() -> None:
        if media:
            url = control if control.startswith("rtsp://") else base.rstrip("/") + "/" + control
            streams.append(SdpStream(media, encoding, clock, url))

    for line in sdp.splitlines():
        if line.startswith("m="):
            flush()
            media, encoding, clock, control = line[2:].split(" ")[0], "", 0, ""
        elif line.startswith("a=rtpmap:") and media:
            enc = line.split(" ", 1)[1].split("/")
            encoding, clock = enc[0].upper(), int(enc[1])
        elif line.startswith("a=control:") and media:
            control = line[len("a=control:") :]
    flush()
    return streams


# --- NAL units: from RTP payloads (RFC 6184 / RFC 7798) and from the clip files -----------


def depacketize(payloads: list[bytes], codec: Literal["h264", "h265"]) -> list[bytes]:
    """The NAL units carried by consecutive RTP payloads of one stream (no loss assumed)."""
    nals: list[bytes] = []
    fu: bytearray | None = None
    for p in payloads:
        if codec == "h264":
            kind, head, agg, frag = p[0] & 0x1F, 1, 24, 28
        else:
            kind, head, agg, frag = (p[0] >> 1) & 0x3F, 2, 48, 49
        if kind == agg:
            pos = head
            while pos + 2 <= len(p):
                size = struct.unpack(">H", p[pos : pos + 2])[0]
                nals.append(p[pos + 2 : pos + 2 + size])
                pos += 2 + size
        elif kind == frag:
            fu_header = p[head]
            if fu_header & 0x80:
                if codec == "h264":
                    fu = bytearray([(p[0] & 0xE0) | (fu_header & 0x1F)])
                else:
                    fu = bytearray([(p[0] & 0x81) | ((fu_header & 0x3F) << 1), p[1]])
            if fu is not None:
                fu += p[head + 1 :]
                if fu_header & 0x40:
                    nals.append(bytes(fu))
                    fu = None
        else:
            nals.append(p)
    return nals


def nal_type(nal: bytes, codec: Literal["h264", "h265"]) -> int:
    return nal[0] & 0x1F if codec == "h264" else (nal[0] >> 1) & 0x3F


def clip_nal_units(clip: Path, codec: Literal["h264", "h265"]) -> list[bytes]:
    """The NAL units of a clip's video elementary stream, in file order (via ffmpeg -c copy)."""
    out = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-nostdin",
            "-i",
            str(clip),
            "-map",
            "0:v",
            "-c",
            "copy",
            "-f",
            "h264" if codec == "h264" else "hevc",
            "-",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    return annexb_nal_units(out)
