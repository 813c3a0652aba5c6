"""Stitch a rendition: its CMAF fragments and the audio's, remuxed into one faststart MP4.

Pure PyAV: no bus, no HTTP. Stream copy only (no decoding, no encoding). Inputs are files
holding an init segment followed by the track's fragments in order, as stored.

Timestamps: FFmpeg's mov demuxer shifts presentation times of a track with negative
composition offsets forward by the largest of them, so the IDR that opens the video at
`tfdt` would come out a few frames late; the shift is taken back here (the MP4 then starts
with negative decode times, which the muxer covers with an edit list, as for any H.264
with B-frames). The audio is shifted back by its encoder priming for the same reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction

import av

from media.problems import MediaError
from media.source import open_file

from . import cmaf


@dataclass(frozen=True)
class StitchResult:
    width: int
    height: int
    duration: float  # seconds
    size: int  # bytes
    has_audio: bool
    frames: int


def stitch(video: str, dst: str, *, audio: str | None = None, audio_priming: int = 0) -> StitchResult:
    """Write `dst` (MP4, faststart) from the CMAF track file `video` and, when given, the
    CMAF track file `audio` whose first `audio_priming` samples are encoder delay.

    Raises MediaError("encode_failed") when an input is not the CMAF the chunk tasks store
    or the muxer fails; the partial `dst` is removed."""
    try:
        return _stitch(video, dst, audio, audio_priming)
    except (av.error.FFmpegError, cmaf.CmafError) as e:
        _remove(dst)
        raise MediaError("encode_failed", f"stitching failed: {getattr(e, 'strerror', None) or e}") from None
    except BaseException:
        _remove(dst)
        raise


def _stitch(video: str, dst: str, audio: str | None, priming: int) -> StitchResult:
    vin = open_file(video)
    ain = open_file(audio) if audio else None
    try:
        vs = vin.streams.video[0]
        as_ = ain.streams.audio[0] if ain is not None else None
        with av.open(dst, "w", format="mp4", options={"movflags": "+faststart"}) as out:
            vout = out.add_stream_from_template(vs)
            aout = out.add_stream_from_template(as_) if as_ is not None else None
            # the mov demuxer's time base is 1/timescale: tfdt is in its ticks
            tracks = [_Track(vin, vs, vout, start_ticks=_first_tfdt(video))]
            if as_ is not None:
                tracks.append(_Track(ain, as_, aout, shift=round(Fraction(priming, 48000) / as_.time_base)))
            frames = _interleave(out, tracks)
            end = max(t.end for t in tracks)
        return StitchResult(
            width=vs.codec_context.width,
            height=vs.codec_context.height,
            duration=float(end),
            size=os.path.getsize(dst),
            has_audio=as_ is not None,
            frames=frames,
        )
    finally:
        vin.close()
        if ain is not None:
            ain.close()


class _Track:
    def __init__(self, container, stream, out_stream, *, start_ticks: int | None = None, shift: int = 0):
        self.packets = (p for p in container.demux(stream) if p.dts is not None)
        self.out = out_stream
        self.tb = stream.time_base
        self.start_ticks = start_ticks  # the first packet's real presentation time (video)
        self.shift = shift
        self.end = Fraction(0)
        self.head = self._next()

    def _next(self):
        packet = next(self.packets, None)
        if packet is None:
            return None
        if self.start_ticks is not None:
            self.shift = packet.pts - self.start_ticks  # the demuxer's forward shift
            self.start_ticks = None
        packet.pts -= self.shift
        packet.dts -= self.shift
        self.end = max(self.end, (packet.pts + (packet.duration or 0)) * self.tb)
        return packet

    def time(self) -> Fraction:
        return self.head.dts * self.tb

    def take(self):
        packet, self.head = self.head, self._next()
        packet.stream = self.out
        return packet


def _interleave(out, tracks: list[_Track]) -> int:
    """Mux the tracks' packets in decode-time order (the muxer would otherwise buffer a whole
    track waiting for the other); returns the video packets written."""
    video_packets = 0
    while True:
        live = [t for t in tracks if t.head is not None]
        if not live:
            return video_packets
        track = min(live, key=_Track.time)
        video_packets += track is tracks[0]
        out.mux(track.take())


def _first_tfdt(path: str) -> int:
    """The `tfdt` of the first fragment of a CMAF track file, read from its first boxes."""
    with open(path, "rb") as fh:
        for kind, pos, size in cmaf.file_boxes(fh):
            if kind == "moof":
                fh.seek(pos)
                return cmaf.tfdt(fh.read(size))
    raise cmaf.CmafError(f"{path}: no fragment")


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
