"""G.711 to AAC for segment files (audio only; video is never transcoded).

MP4 has no sample entry for G.711 that players honour, so a camera's PCMA/PCMU audio is
either transcoded to AAC here or left out, as the camera's config says. AAC from the
camera is copied as it is and never comes through here.
"""

from __future__ import annotations

from fractions import Fraction

import av
from av.audio.codeccontext import AudioCodecContext
from av.audio.frame import AudioFrame as AvAudioFrame

from nvr.media import AudioCodec, AudioFrame

_DECODERS = {AudioCodec.PCMA: "pcm_alaw", AudioCodec.PCMU: "pcm_mulaw"}
# The byte that decodes to (near) zero amplitude, used to fill gaps in the input.
_SILENCE = {AudioCodec.PCMA: b"\xd5", AudioCodec.PCMU: b"\xff"}
_AAC_BIT_RATE_PER_CHANNEL = 32_000

# (pts in clock-rate units from the segment start, raw AAC frame, samples)
AacPacket = tuple[int, bytes, int]


def adts_template() -> bytes:
    """Two empty ADTS frame headers: enough for libavformat to open an AAC stream.

    Used only to get an AAC stream to copy as a template; no audio is decoded from it.
    """
    header = bytes([0xFF, 0xF1, 0x50, 0x40, 0x00, 0xFF, 0xFC])  # LC, 44.1 kHz, mono, 7 bytes
    return header * 2


class G711ToAac:
    """Push G.711 frames with their times, pull AAC frames with theirs.

    Output times keep the encoder's priming: the first AAC frame starts 1024 samples
    before the first input sample, so decoded audio lines up with its input times. A
    frame that would start before the segment (pts < 0) is dropped instead: the mov
    muxer would otherwise shift every track, video included, to make it non-negative.
    Losing it only costs the decoder the overlap of the first 1024 samples (a soft
    start). A gap in the input is filled with silence so the output stays continuous;
    input overlapping what was already taken is cut off.
    """

    def __init__(self, codec: AudioCodec, clock_rate: int, channels: int) -> None:
        if codec not in _DECODERS:
            raise ValueError(f"G711ToAac takes PCMA or PCMU, not {codec}")
        layout = "stereo" if channels == 2 else "mono"
        self._channels = channels
        self._silence = _SILENCE[codec]
        decoder = av.CodecContext.create(_DECODERS[codec], "r")
        assert isinstance(decoder, AudioCodecContext)
        decoder.sample_rate = clock_rate
        decoder.layout = layout
        self._decoder = decoder
        encoder = av.CodecContext.create("aac", "w")
        assert isinstance(encoder, AudioCodecContext)
        encoder.sample_rate = clock_rate
        encoder.layout = layout
        encoder.format = "fltp"
        encoder.time_base = Fraction(1, clock_rate)
        encoder.bit_rate = _AAC_BIT_RATE_PER_CHANNEL * channels
        encoder.open()
        self._encoder = encoder
        self._resampler = av.AudioResampler(
            format="fltp", layout=layout, rate=clock_rate, frame_size=encoder.frame_size
        )
        self.extradata = bytes(encoder.extradata or b"")
        self._origin: int | None = None  # pts of the first input sample
        self._taken = 0  # input samples taken, silence included
        self._encoded = 0  # samples handed to the encoder

    def push(self, frame: AudioFrame, pts: int) -> list[AacPacket]:
        if self._origin is None:
            self._origin = pts
        expected = self._origin + self._taken
        data = frame.data
        if pts > expected:
            data = self._silence * ((pts - expected) * self._channels) + data
        elif pts < expected:
            data = data[(expected - pts) * self._channels :]
        usable = len(data) - len(data) % self._channels
        if usable <= 0:
            return []
        self._taken += usable // self._channels
        out: list[AacPacket] = []
        for decoded in self._decoder.decode(av.Packet(data[:usable])):
            decoded.pts = None
            for chunk in self._resampler.resample(decoded):
                out += self._encode(chunk)
        return out

    def flush(self) -> list[AacPacket]:
        """Everything still inside the resampler and the encoder."""
        out: list[AacPacket] = []
        if self._origin is None:
            return out
        for chunk in self._resampler.resample(None):
            out += self._encode(chunk)
        out += self._encode(None)
        return out

    def _encode(self, chunk: AvAudioFrame | None) -> list[AacPacket]:
        assert self._origin is not None
        if chunk is not None:
            chunk.pts = self._encoded
            self._encoded += chunk.samples
        out: list[AacPacket] = []
        for packet in self._encoder.encode(chunk):
            pts = self._origin + (packet.pts or 0)
            if pts >= 0:
                out.append((pts, bytes(packet), packet.duration or self._encoder.frame_size))
        return out
