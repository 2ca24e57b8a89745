#!/usr/bin/python3
"""A simulated IP camera: GStreamer's RTSP server on loopback, plus a tiny control API.

Runs under the system Python (PyGObject comes from Debian, not the project venv):

    /usr/bin/python3 tools/fakecam.py --rtsp-port 0 --control-port 0 --auth digest \
        --user admin --password 'p@ss:/%#?' --media-dir /tmp/fakecam-media

When ready it prints one JSON line on stdout: {"ready": true, "rtsp_port": ..., ...}.

Mounts (shared=False: every client gets its own pipeline, starting at the clip's start):

  /live/*  encoded live from videotestsrc (with a clock overlay) and audiotestsrc.
           H.264: x264enc superfast, Main profile, one slice per frame, no B-frames, no AUDs,
           IDR every 50 frames with SPS+PPS in-band before each; x264's version SEI once, in
           the first access unit. H.265: x265enc Main, one slice, no B-frames, closed GOP
           (IDR_N_LP), VPS+SPS+PPS+SEI before each IDR; the very first access unit carries
           the parameter sets twice (x265enc's header buffer, then repeat-headers).
           AAC: voaacenc 48 kHz mono, RFC 3640 AAC-hbr. G.711: 8 kHz mono, 160 bytes (20 ms)
           per packet.
  /file/*  the MPEG-TS clips in --media-dir, looped, never re-encoded. Every NAL unit of the
           clip's video elementary stream reaches the wire byte for byte and in file order,
           access unit delimiters included (h264: AUD, SPS+PPS before each IDR, one x264 SEI
           in the first AU; h265: AUD, VPS+SPS+PPS+SEI before each IDR). Nothing is inserted:
           config-interval=0 on parser and payloader. AAC loses only its ADTS headers.
           Looping: tsdemux treats the PCR stepping back as a discontinuity and keeps time
           running, so RTP timestamps never go backwards. Each pass lasts 10.02 s of media
           time, not 10.00: at the loop point one video step is 5400 (60 ms) instead of 3600,
           and one AAC step is ~705 samples instead of 1024 (the audio is slightly longer than
           the video). Audio and video shift together, so they stay in sync. AAC timestamps
           also wobble by +-1 sample (they come from the TS's 90 kHz clock).
           Seeking: the server would seek on `PLAY Range: npt=0.000-`, tsdemux refuses, the
           reply is 503; the pipeline therefore answers SEEKING queries with "not seekable".
  /file/h264-pcma  the h264 clip's video with live G.711 A-law audio.

Control API on http://127.0.0.1:<control-port>:
  POST /drop              close every client connection now -> {"dropped": n}
  POST /stall?seconds=N   drop every RTP packet of every running media for N seconds; the
                          connection and RTCP stay up; afterwards the RTP sequence numbers
                          skip the dropped packets and timestamps jump ahead by ~N s
  GET  /stats             per mount: clients, rtp_packets, video_access_units
  POST /quit              stop the server
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer

LOOPBACK = "127.0.0.1"
GOP_FRAMES = 50
CLIP_SECONDS = 10

# Clip name -> ffmpeg arguments after the inputs. Video is input 0, a sine tone input 1.
_H264 = (
    "-c:v libx264 -preset veryfast -profile:v main -pix_fmt yuv420p "
    f"-g {GOP_FRAMES} -keyint_min {GOP_FRAMES} -sc_threshold 0 -bf 0"
).split()
_H265 = (
    "-c:v libx265 -preset veryfast -pix_fmt yuv420p -x265-params "
    f"keyint={GOP_FRAMES}:min-keyint={GOP_FRAMES}:scenecut=0:bframes=0:open-gop=0:log-level=error"
).split()
_AAC = ["-c:a", "aac", "-b:a", "64k", "-ac", "1"]
CLIPS: dict[str, tuple[list[str], bool]] = {
    "h264": (_H264, False),
    "h265": (_H265, False),
    "h264-aac": (_H264 + _AAC, True),
    "h265-aac": (_H265 + _AAC, True),
}


def make_clips(media_dir: Path, width: int, height: int, fps: int) -> dict[str, Path]:
    """Create the looped clips (MPEG-TS, exact 2 s GOPs) unless they exist already."""
    media_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (codec_args, with_audio) in CLIPS.items():
        default_size = (width, height, fps) == (640, 360, 25)  # tests use <name>.ts directly
        path = media_dir / (f"{name}.ts" if default_size else f"{name}-{width}x{height}-{fps}.ts")
        paths[name] = path
        if path.exists():
            continue
        inputs = ["-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}"]
        if with_audio:
            inputs += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
        tmp = path.with_suffix(f".{os.getpid()}.part")
        cmd = ["ffmpeg", "-v", "error", "-nostdin", "-y", *inputs, "-t", str(CLIP_SECONDS)]
        cmd += [*codec_args, "-f", "mpegts", str(tmp)]
        subprocess.run(cmd, check=True)
        tmp.rename(path)  # atomic: a concurrent maker never sees half a clip
    return paths


def _quote(path: Path) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_mounts(clips: dict[str, Path], width: int, height: int, fps: int) -> dict[str, str]:
    """Mount path -> gst-launch description. Payloaders are pay0 (video) and pay1 (audio)."""
    raw = (
        f"videotestsrc is-live=true pattern=smpte ! video/x-raw,format=I420,width={width},"
        f'height={height},framerate={fps}/1 ! timeoverlay font-desc="Sans 24" ! '
    )
    h264 = (
        raw + "x264enc tune=zerolatency speed-preset=superfast sliced-threads=false "
        f"key-int-max={GOP_FRAMES} bframes=0 aud=false ! "
        "video/x-h264,stream-format=byte-stream,profile=main ! "
        "rtph264pay name=pay0 pt=96 config-interval=0"
    )
    h265 = (
        raw + f"x265enc tune=zerolatency speed-preset=superfast key-int-max={GOP_FRAMES} "
        'option-string="bframes=0:open-gop=0:repeat-headers=1" ! '
        "rtph265pay name=pay0 pt=96 config-interval=0"
    )
    aac = (
        "audiotestsrc is-live=true wave=sine freq=440 ! audio/x-raw,rate=48000,channels=1 "
        "! voaacenc bitrate=64000 ! rtpmp4gpay name=pay1 pt=97"
    )

    def g711(enc: str, pay: str, pt: int) -> str:
        return (
            f"audiotestsrc is-live=true wave=sine freq=440 samplesperbuffer=160 ! "
            f"audio/x-raw,rate=8000,channels=1 ! {enc} ! {pay} name=pay1 pt={pt}"
        )

    def looped(clip: str, codec: str, audio: bool) -> str:
        # config-interval=0 on parser and payloader: never insert parameter sets of our own.
        # identity sync=true paces each branch to the clock itself. Without it only the sinks
        # pace a file pipeline, and while /stall drops every packet the source would race
        # ahead, so the stream would resume seconds late instead of after N seconds.
        pace = "queue ! identity sync=true silent=true"
        desc = (
            f"multifilesrc location={_quote(clips[clip])} loop=true ! tsdemux name=d "
            f"d. ! {codec}parse config-interval=0 ! {pace} ! "
            f"rtp{codec}pay name=pay0 pt=96 config-interval=0"
        )
        if audio:
            desc += f" d. ! aacparse ! {pace} ! rtpmp4gpay name=pay1 pt=97"
        return desc

    return {
        "/live/h264": h264,
        "/live/h265": h265,
        "/live/h264-aac": f"{h264} {aac}",
        "/live/h264-pcma": f"{h264} {g711('alawenc', 'rtppcmapay', 8)}",
        "/live/h264-pcmu": f"{h264} {g711('mulawenc', 'rtppcmupay', 0)}",
        "/live/h265-aac": f"{h265} {aac}",
        "/file/h264": looped("h264", "h264", False),
        "/file/h265": looped("h265", "h265", False),
        "/file/h264-aac": looped("h264-aac", "h264", True),
        "/file/h265-aac": looped("h265-aac", "h265", True),
        "/file/h264-pcma": f"{looped('h264', 'h264', False)} {g711('alawenc', 'rtppcmapay', 8)}",
    }


class MountStats:
    """Counters for one mount; touched from streaming threads, so guarded by a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.clients = 0
        self.rtp_packets = 0
        self.video_access_units = 0

    def as_dict(self) -> dict[str, int]:
        with self.lock:
            return {
                "clients": self.clients,
                "rtp_packets": self.rtp_packets,
                "video_access_units": self.video_access_units,
            }


def _buffer_count(info: Gst.PadProbeInfo) -> int:
    if info.type & Gst.PadProbeType.BUFFER_LIST:
        return int(info.get_buffer_list().length())
    return 1


class FakeCam:
    def __init__(self, args: argparse.Namespace) -> None:
        self.stall_until = 0.0  # time.monotonic() before which every RTP packet is dropped
        self.stats: dict[str, MountStats] = {}
        self.server = GstRtspServer.RTSPServer()
        self.server.set_address(LOOPBACK)
        self.server.set_service(str(args.rtsp_port))
        self.clips = make_clips(Path(args.media_dir), args.width, args.height, args.fps)
        mounts = build_mounts(self.clips, args.width, args.height, args.fps)
        auth = self._make_auth(args.auth, args.user, args.password)
        if auth is not None:
            self.server.set_auth(auth)
        # UDP transport binds its RTP/RTCP sockets to the wildcard address unless a pool of
        # unicast addresses is given: this one keeps them on loopback too.
        pool = GstRtspServer.RTSPAddressPool()
        pool.add_range(LOOPBACK, LOOPBACK, 20000, 60999, 0)
        points = self.server.get_mount_points()
        for path, launch in mounts.items():
            factory = GstRtspServer.RTSPMediaFactory()
            factory.set_address_pool(pool)
            factory.set_launch(f"( {launch} )")
            factory.set_shared(False)
            if auth is not None:
                factory.add_role_from_structure(
                    Gst.Structure.from_string(
                        "user, media.factory.access=(boolean)true, "
                        "media.factory.construct=(boolean)true"
                    )[0]
                )
            self.stats[path] = MountStats()
            factory.connect("media-configure", self._on_media_configure, path)
            points.add_factory(path, factory)
        self.mounts = list(mounts)

    @staticmethod
    def _make_auth(method: str, user: str, password: str) -> GstRtspServer.RTSPAuth | None:
        if method == "none":
            return None
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "user")
        if method == "basic":
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
        else:
            auth.add_digest(user, password, token)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        return auth

    # --- per-media hooks -------------------------------------------------------------------

    def _on_media_configure(self, _factory: Any, media: GstRtspServer.RTSPMedia, path: str) -> None:
        stats = self.stats[path]
        bin_ = media.get_element()
        with stats.lock:
            stats.clients += 1
        media.connect("unprepared", self._on_media_unprepared, stats)
        for name in ("pay0", "pay1"):
            pay = bin_.get_by_name(name)
            if pay is None:
                continue
            data = Gst.PadProbeType.BUFFER | Gst.PadProbeType.BUFFER_LIST
            pay.get_static_pad("src").add_probe(data, self._on_rtp, stats)
            pay.get_static_pad("src").add_probe(Gst.PadProbeType.QUERY_UPSTREAM, self._on_query)
            if name == "pay0":
                pay.get_static_pad("sink").add_probe(data, self._on_access_unit, stats)

    @staticmethod
    def _on_media_unprepared(_media: Any, stats: MountStats) -> None:
        with stats.lock:
            stats.clients -= 1

    def _on_rtp(self, _pad: Gst.Pad, info: Gst.PadProbeInfo, stats: MountStats) -> Any:
        if time.monotonic() < self.stall_until:
            return Gst.PadProbeReturn.DROP
        with stats.lock:
            stats.rtp_packets += _buffer_count(info)
        return Gst.PadProbeReturn.OK

    @staticmethod
    def _on_access_unit(_pad: Gst.Pad, info: Gst.PadProbeInfo, stats: MountStats) -> Any:
        with stats.lock:
            stats.video_access_units += _buffer_count(info)
        return Gst.PadProbeReturn.OK

    @staticmethod
    def _on_query(_pad: Gst.Pad, info: Gst.PadProbeInfo) -> Any:
        # rtsp-media asks the pipeline whether it can seek with a fresh SEEKING query, whose
        # fields start out as "not seekable". Answering it here, untouched, keeps it that way.
        # (PyGObject holds an extra reference, so the query is not writable from Python and
        # set_seeking() would only log a CRITICAL.)
        if info.get_query().type == Gst.QueryType.SEEKING:
            return Gst.PadProbeReturn.HANDLED
        return Gst.PadProbeReturn.OK

    # --- control actions (always run on the GLib main loop) --------------------------------

    def drop_clients(self) -> int:
        dropped = []

        def close(_server: Any, _client: Any) -> GstRtspServer.RTSPFilterResult:
            dropped.append(1)
            return GstRtspServer.RTSPFilterResult.REMOVE

        self.server.client_filter(close)
        return len(dropped)

    def stall(self, seconds: float) -> None:
        self.stall_until = time.monotonic() + seconds


def call_on_main_loop(func: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    """Run func on the GLib main loop and wait for its result (from a control thread)."""
    done = threading.Event()
    box: list[Any] = []

    def run() -> bool:
        try:
            box.append(func())
        finally:
            done.set()
        return False  # one-shot idle source

    GLib.idle_add(run)
    if not done.wait(timeout_s):
        raise TimeoutError("GLib main loop did not run the action")
    return box[0] if box else None


def make_control_handler(cam: FakeCam, loop: GLib.MainLoop) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep stdout for the ready line and stderr quiet

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if urlsplit(self.path).path == "/stats":
                stats = {path: s.as_dict() for path, s in cam.stats.items()}
                self._reply(200, {"mounts": stats, "stalled": time.monotonic() < cam.stall_until})
            else:
                self._reply(404, {"error": "not found"})

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/drop":
                self._reply(200, {"dropped": call_on_main_loop(cam.drop_clients)})
            elif url.path == "/stall":
                try:
                    seconds = float(parse_qs(url.query)["seconds"][0])
                except (KeyError, ValueError):
                    self._reply(400, {"error": "need ?seconds=N"})
                    return
                cam.stall(seconds)
                self._reply(200, {"stalled_for_s": seconds})
            elif url.path == "/quit":
                self._reply(200, {"quitting": True})
                GLib.idle_add(lambda: loop.quit() or False)
            else:
                self._reply(404, {"error": "not found"})

    return Handler


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rtsp-port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--control-port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--auth", choices=["none", "basic", "digest"], default="none")
    p.add_argument("--user", default="admin")
    p.add_argument("--password", default="admin")
    p.add_argument("--media-dir", required=True, help="clips are made here if missing")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--make-clips", action="store_true", help="make the clips, print their paths")
    p.add_argument("--quit-on-stdin-eof", action="store_true", help="exit when the parent goes")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.make_clips:
        clips = make_clips(Path(args.media_dir), args.width, args.height, args.fps)
        print(json.dumps({name: str(path) for name, path in clips.items()}), flush=True)
        return 0
    Gst.init(None)
    cam = FakeCam(args)
    loop = GLib.MainLoop()
    if cam.server.attach(None) == 0:
        print(f"fakecam: cannot listen on {LOOPBACK}:{args.rtsp_port}", file=sys.stderr)
        return 1
    control = ThreadingHTTPServer((LOOPBACK, args.control_port), make_control_handler(cam, loop))
    control.daemon_threads = True
    threading.Thread(target=control.serve_forever, name="control", daemon=True).start()

    def quit_loop(*_: Any) -> bool:
        loop.quit()
        return False  # a one-shot source

    def quit_at_stdin_eof() -> None:  # a test runner killed hard must not leave cameras behind
        # os.read, not sys.stdin: a daemon thread blocked inside the buffered reader holds
        # its lock, and the interpreter aborts (SIGABRT) when it meets that lock at exit.
        while os.read(0, 4096):
            pass
        GLib.idle_add(quit_loop)

    if args.quit_on_stdin_eof:
        threading.Thread(target=quit_at_stdin_eof, name="stdin", daemon=True).start()
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, quit_loop)
    ready = {
        "ready": True,
        "rtsp_port": cam.server.get_bound_port(),
        "control_port": control.server_address[1],
        "auth": args.auth,
        "mounts": cam.mounts,
        "clips": {name: str(path) for name, path in cam.clips.items()},
        "pid": os.getpid(),
    }
    print(json.dumps(ready), flush=True)
    try:
        loop.run()
    finally:
        control.shutdown()
        control.server_close()
        cam.drop_clients()  # clients see the connection close at once, not a stall
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
