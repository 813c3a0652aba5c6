"""Debian's ffmpeg (5.1): the reference the media tests compare the product with, and the
maker of the clips PyAV's bundled FFmpeg cannot write (HDR HEVC with x265, interlaced
H.264, ProRes 4444, QuickTime Animation, animated images).

It is a test tool only (the product uses PyAV's bundled FFmpeg 8.1). `make test` installs
it with apt when it is missing (tests/apt-install.sh); without it these tests skip with a
`REFERENCE FFMPEG MISSING` reason, except with CI=true, where they fail (`missing_tool` in
tests/conftest.py). `VIDMESH_REFERENCE_FFMPEG` points them at another binary.
"""

from __future__ import annotations

import functools
import os
import random
import re
import shutil
import struct
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tests.conftest import missing_tool

NEEDED_FILTERS = ("zscale", "tonemap", "idet", "tinterlace", "palettegen")
NEEDED_ENCODERS = (
    "libx265",
    "libx264",
    "libvpx-vp9",
    "prores_ks",
    "qtrle",
    "png",
    "gif",
    "apng",
    "libwebp_anim",
    "ac3",
    "mpeg4",
)


@functools.cache
def _find() -> tuple[str | None, str]:
    path = os.environ.get("VIDMESH_REFERENCE_FFMPEG") or shutil.which("ffmpeg") or "/usr/bin/ffmpeg"
    if not os.path.exists(path):
        return None, f"no ffmpeg at {path}"
    filters = subprocess.run([path, "-hide_banner", "-filters"], capture_output=True, text=True).stdout
    encoders = subprocess.run([path, "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    missing = [f for f in NEEDED_FILTERS if not re.search(rf"\s{re.escape(f)}\s", filters)]
    missing += [e for e in NEEDED_ENCODERS if not re.search(rf"\s{re.escape(e)}\s", encoders)]
    if missing:
        return None, f"{path} lacks {', '.join(missing)}"
    return path, ""


def ffmpeg_path() -> str:
    """The reference ffmpeg, or skip (fail with CI=true)."""
    path, why = _find()
    if path is None:
        missing_tool(
            "Debian's ffmpeg",
            "`apt-get install ffmpeg` (`make test` does, as root or with passwordless "
            "sudo), or set VIDMESH_REFERENCE_FFMPEG to another ffmpeg binary",
            why,
            untested="REFERENCE FFMPEG MISSING",
        )
    return path


def ffmpeg(*args: str) -> str:
    """Run the reference ffmpeg; its log (stderr) is returned."""
    done = subprocess.run(
        [ffmpeg_path(), "-hide_banner", "-nostdin", "-y", *map(str, args)], capture_output=True, text=True
    )
    if done.returncode:
        raise AssertionError(f"ffmpeg {' '.join(map(str, args))} failed:\n{done.stderr[-2000:]}")
    return done.stderr


def raw_frame(src, filters: str, pix_fmt: str = "yuv420p", index: int = 0) -> bytes:
    """Frame `index` of `src` through the reference's `filters`, as raw `pix_fmt` bytes."""
    done = subprocess.run(
        [
            ffmpeg_path(),
            "-v",
            "error",
            "-nostdin",
            "-i",
            str(src),
            "-vf",
            f"select=eq(n\\,{index}),{filters},format={pix_fmt}",
            "-frames:v",
            "1",
            "-f",
            "rawvideo",
            "-",
        ],
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done.stdout


def idet(path) -> dict[str, int]:
    """What ffmpeg's idet filter counts over a file: {"tff", "bff", "progressive", "undetermined"}."""
    log = ffmpeg("-i", path, "-vf", "idet", "-an", "-f", "null", "-")
    m = re.search(r"Multi frame detection: TFF:\s*(\d+) BFF:\s*(\d+) Progressive:\s*(\d+) Undetermined:\s*(\d+)", log)
    assert m, log[-2000:]
    return dict(zip(("tff", "bff", "progressive", "undetermined"), map(int, m.groups())))


# --- clips ------------------------------------------------------------------------------------

TRANSFERS = {"hlg": "arib-std-b67", "pq": "smpte2084"}


def hdr_clip(path, kind: str, *, size: str = "640x360", seconds: float = 0.2) -> str:
    """10-bit HEVC, BT.2020, HLG or PQ, as a current phone records (the issue's recipe)."""
    t = TRANSFERS[kind]
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=s={size}:r=30:d={seconds}",
        "-vf",
        "format=yuv420p10le",
        "-c:v",
        "libx265",
        "-preset",
        "ultrafast",
        "-x265-params",
        f"colorprim=bt2020:transfer={t}:colormatrix=bt2020nc:log-level=error",
        "-color_primaries",
        "bt2020",
        "-color_trc",
        t,
        "-colorspace",
        "bt2020nc",
        "-tag:v",
        "hvc1",
        path,
    )
    return str(path)


# zscale to linear light (1.0 = 100 cd/m2), BT.709 primaries, Hable's curve, BT.709: the chain
# FFmpeg users run for HDR -> SDR; then R'G'B' clipped to what a display shows (gbrp) and
# made Y'CbCr BT.709, limited range (a rendition) or BT.601, full range (JFIF, a thumbnail).
_TONEMAP = (
    "zscale=t=linear:npl=100,format=gbrpf32le,zscale=p=bt709,tonemap=tonemap=hable:desat=0,zscale=t=bt709,format=gbrp"
)
TONEMAP_REFERENCE = _TONEMAP + ",scale=out_color_matrix=bt709:out_range=tv"
TONEMAP_REFERENCE_JFIF = _TONEMAP + ",scale=out_color_matrix=bt470bg:out_range=pc"


def interlaced_clip(
    path, order: str, *, size: str = "640x360", seconds: float = 1.0, container: str = "mpegts", gop: int = 12
) -> str:
    """H.264 coded interlaced (PAFF/MBAFF flags) at 25 frames (50 fields) a second, top or
    bottom field first, as a camcorder or a broadcast writes it (the issue's recipe)."""
    mode = "interleave_top" if order == "tff" else "interleave_bottom"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=s={size}:r=50:d={seconds}",
        "-vf",
        f"tinterlace=mode={mode},setfield={order}",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-flags",
        "+ildct+ilme",
        "-g",
        str(gop),
        "-x264-params",
        f"{order}=1",
        "-f",
        container,
        path,
    )
    return str(path)


ALPHA_CODECS = {
    "vp9 webm": ("webm", ["-c:v", "libvpx-vp9", "-pix_fmt", "yuva420p", "-auto-alt-ref", "0", "-deadline", "realtime"]),
    "prores 4444": ("mov", ["-c:v", "prores_ks", "-profile:v", "4444", "-pix_fmt", "yuva444p10le"]),
    "qtrle": ("mov", ["-c:v", "qtrle", "-pix_fmt", "argb"]),
    "png in mov": ("mov", ["-c:v", "png", "-pix_fmt", "rgba"]),
}


def alpha_clip(directory, kind: str) -> str:
    """320x240, 10 frames at 25/s: the left half transparent over pure green, the right half
    opaque red."""
    ext, codec = ALPHA_CODECS[kind]
    path = Path(directory) / f"alpha-{kind.replace(' ', '-')}.{ext}"
    ffmpeg("-i", _rgba_frames(Path(directory) / "alpha-source.mkv", [40] * 10, 320, 240), *codec, path)
    return str(path)


def _rgba_frames(path: Path, delays_ms, width: int, height: int, *, mark: bool = False) -> str:
    """Lossless frames (FFV1 bgra in Matroska, millisecond timestamps) shown for `delays_ms`:
    the left half transparent over pure green, the right half opaque red; with `mark`, a
    white square moving along the top."""
    tb = Fraction(1, 1000)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=1000)  # a coarser rate would round the delays
        stream.width, stream.height, stream.pix_fmt = width, height, "bgra"
        stream.time_base = stream.codec_context.time_base = tb
        at = 0
        for i, delay in enumerate(delays_ms):
            rgba = np.zeros((height, width, 4), np.uint8)
            rgba[..., 1] = 255  # green, fully transparent
            rgba[:, width // 2 :] = (255, 0, 0, 255)
            if mark:
                rgba[:8, 8 * i : 8 * i + 8] = (255, 255, 255, 255)
            frame = av.VideoFrame.from_ndarray(rgba, format="rgba").reformat(format="bgra")
            frame.pts, frame.time_base = at, tb
            for packet in stream.encode(frame):
                packet.duration = delay
                out.mux(packet)
            at += delay
        for packet in stream.encode(None):
            out.mux(packet)
    return str(path)


ANIMATION_DELAYS_MS = (100, 500, 200, 1000)


def animation(directory, kind: str, *, frames: int = 4) -> str:
    """An animated GIF, APNG or WebP of 64x48 frames shown for ANIMATION_DELAYS_MS: the left
    half transparent over pure green, the right half opaque red, a white mark moving along
    the top. `frames=1` makes a still image in the same format."""
    directory = Path(directory)
    source = _rgba_frames(directory / f"frames-{frames}.mkv", ANIMATION_DELAYS_MS[:frames], 64, 48, mark=True)
    path = directory / f"anim-{frames}.{kind}"
    if kind == "gif":
        palette = "split[a][b];[a]palettegen=reserve_transparent=1[p];[b][p]paletteuse=alpha_threshold=128"
        ffmpeg("-i", source, "-filter_complex", palette, "-fps_mode", "passthrough", path)
    elif kind == "apng":
        ffmpeg("-i", source, "-fps_mode", "passthrough", "-pix_fmt", "rgba", "-plays", "0", "-f", "apng", path)
    else:
        ffmpeg("-i", source, "-fps_mode", "passthrough", "-c:v", "libwebp_anim", "-lossless", "1", "-loop", "0", path)
    return str(path)


def damaged_avi(path, *, seconds: float = 6.0) -> str:
    """MPEG-4 video and AC-3 audio in AVI, the last AC-3 frame's payload scrambled (its sync
    word and header kept): FFmpeg's AC-3 decoder refuses that packet."""
    clean = Path(path).with_suffix(".clean.avi")
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=s=160x90:r=25:d={seconds}",
        "-f",
        "lavfi",
        "-i",
        f"sine=f=440:d={seconds}:r=48000",
        "-c:v",
        "mpeg4",
        "-c:a",
        "ac3",
        "-shortest",
        clean,
    )
    data = clean.read_bytes()
    at = data.rfind(b"01wb", 0, data.rfind(b"idx1"))  # the last audio chunk: one AC-3 frame
    size = int.from_bytes(data[at + 4 : at + 8], "little")
    body = at + 8
    assert data[body : body + 2] == b"\x0b\x77", "an AC-3 frame starts with its sync word"
    for seed in range(64):  # a scramble the decoder notices (some still pass its checks)
        rng = random.Random(seed)
        damaged = bytearray(data)
        damaged[body + 5 : body + size] = bytes(rng.randrange(256) for _ in range(size - 5))
        Path(path).write_bytes(damaged)
        if _audio_refused(path):
            return str(path)
    raise AssertionError("no scramble made the AC-3 decoder refuse the frame")


def _audio_refused(path) -> bool:
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        for packet in c.demux(stream):
            try:
                packet.decode()
            except av.error.FFmpegError:
                return True
    return False


def declare_duration(path, seconds: float) -> None:
    """Make a Matroska or FLV header declare `seconds` (a recording whose header was written
    for a length it never reached): Matroska's Segment Info Duration (EBML ID 0x4489, an
    8-byte float in TimecodeScale units, 1 ms) or FLV's onMetaData `duration` (AMF number)."""
    data = bytearray(Path(path).read_bytes())
    if data[:3] == b"FLV":
        at = data.find(b"duration")
        assert at > 0 and data[at + 8] == 0, "onMetaData has a numeric duration"
        data[at + 9 : at + 17] = struct.pack(">d", seconds)
    else:
        at = data.find(b"\x44\x89\x88")
        assert at > 0, "Matroska Info has an 8-byte Duration"
        data[at + 3 : at + 11] = struct.pack(">d", seconds * 1000)
    Path(path).write_bytes(data)


def cut_short(path, keep: float) -> None:
    """Keep the first `keep` of the file's media. Matroska: of what comes before its Cues,
    which a recording cut short never wrote, nor the SeekHead entry pointing at them (made
    an EBML Void of the same length)."""
    data = bytearray(Path(path).read_bytes())
    end = len(data)
    if data[:4] == b"\x1a\x45\xdf\xa3":
        entry = data.find(b"\x53\xab\x84\x1c\x53\xbb\x6b")  # SeekID = Cues, inside a Seek element
        if entry > 0:
            start = entry - 3  # Seek: ID 0x4DBB, a one-byte size
            assert data[start : start + 2] == b"\x4d\xbb"
            length = 3 + (data[start + 2] & 0x7F)
            data[start : start + length] = b"\xec" + bytes([0x80 | (length - 2)]) + bytes(length - 2)
        end = data.rfind(b"\x1c\x53\xbb\x6b")
    Path(path).write_bytes(bytes(data[: int(end * keep)]))


def late_start_fmp4(directory, *, seconds: int = 72, hls_time: int = 6) -> str:
    """The init segment plus the last fragment of an fMP4 HLS rendition of a `seconds` clip
    (FFmpeg's hls muxer): a complete file whose timeline starts at seconds - hls_time."""
    directory = Path(directory)
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=s=160x90:r=30:d={seconds}",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "30",
        "-f",
        "hls",
        "-hls_segment_type",
        "fmp4",
        "-hls_time",
        str(hls_time),
        "-hls_playlist_type",
        "vod",
        "-hls_segment_filename",
        str(directory / "seg%03d.m4s"),
        directory / "index.m3u8",
    )
    last = sorted(directory.glob("seg*.m4s"))[-1]
    path = directory / "late.mp4"
    path.write_bytes((directory / "init.mp4").read_bytes() + last.read_bytes())
    return str(path)
