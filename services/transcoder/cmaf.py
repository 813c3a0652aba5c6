"""CMAF (fragmented MP4) as FFmpeg's mp4 muxer writes it, cut into what HLS serves.

Pure bytes: no PyAV, no bus. FFmpeg writes the boxes (ISO/IEC 14496-12); this module only
finds them: an init segment (`ftyp` + `moov`) and, per fragment, `moof` + `mdat` with the
`tfdt` (baseMediaDecodeTime) that places it on the track's timeline.

The muxer options that make every chunk of a video agree (measured on FFmpeg 8.1):
- `frag_keyframe`: a fragment starts at every video keyframe; keyframes are forced only at
  segment boundaries, so one fragment is one segment;
- `empty_moov` + `default_base_moof` + `cmaf`: the init segment carries no samples, so it is
  byte-identical for every chunk encoded with the same settings;
- `negative_cts_offsets` + `frag_discont`: `tfdt` is the first sample's own decode time on
  the source timeline (not 0 in every chunk), and with signed composition offsets (trun
  version 1) the IDR that opens a segment has its composition time equal to `tfdt`, so
  chunks encoded apart concatenate into one continuous track;
- `skip_trailer`: no `mfra` index at the end (it would describe one chunk only).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

MOVFLAGS = "cmaf+frag_keyframe+empty_moov+default_base_moof+negative_cts_offsets+frag_discont+skip_trailer"
MUXER_OPTIONS = {"movflags": MOVFLAGS}


class CmafError(ValueError):
    """The bytes are not the fragmented MP4 this module expects."""


@dataclass(frozen=True)
class Fragment:
    """One `moof` + `mdat`: `data` is what a segment file holds; `tfdt` is in track timescale units."""

    tfdt: int
    data: bytes


def boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[str, int, int]]:
    """(type, offset, size) of each box in data[start:end] (ISO/IEC 14496-12, 4.2)."""
    end = len(data) if end is None else end
    yield from _walk(lambda pos: data[pos : min(pos + 16, end)], start, end)


def split(data: bytes) -> tuple[bytes, list[Fragment]]:
    """A fragmented MP4 file -> (init segment, fragments in file order).

    Raises CmafError when there is no `moov` or a `moof` is not followed by its `mdat`."""
    init_end, fragments = _layout(boxes(data), lambda pos, size: tfdt(data, pos, size))
    return data[:init_end], [Fragment(tfdt=t, data=data[pos:end]) for pos, t, end in fragments]


def _layout(
    top: Iterable[tuple[str, int, int]], moof_tfdt: Callable[[int, int], int]
) -> tuple[int, list[tuple[int, int, int]]]:
    """(where the init segment ends, (moof offset, tfdt, mdat end) of each fragment) from a
    file's top-level boxes; moof_tfdt(offset, size) reads a `moof`'s tfdt. Raises CmafError
    when there is no `moov` or a `moof` is not followed by its `mdat`."""
    init_end = None
    fragments: list[tuple[int, int, int]] = []
    pending: tuple[int, int] | None = None  # the moof waiting for its mdat
    for kind, pos, size in top:
        if kind == "moov":
            init_end = pos + size
        elif kind == "moof":
            if pending is not None:
                raise CmafError(f"moof at {pending[0]} without an mdat")
            pending = (pos, size)
        elif kind == "mdat":
            if pending is None:
                raise CmafError(f"mdat at {pos} without a moof")
            fragments.append((pending[0], moof_tfdt(*pending), pos + size))
            pending = None
    if init_end is None:
        raise CmafError("no moov: not an MP4 init segment")
    if pending is not None:
        raise CmafError("the last moof has no mdat")
    return init_end, fragments


@dataclass(frozen=True)
class FragmentRange:
    """Where one `moof` + `mdat` lies in a file (bytes), and its `tfdt`."""

    offset: int
    size: int
    tfdt: int


def file_boxes(fh: BinaryIO) -> Iterator[tuple[str, int, int]]:
    """(type, offset, size) of the top-level boxes of a file, reading only their headers."""

    def header(pos: int) -> bytes:
        fh.seek(pos)
        return fh.read(16)

    yield from _walk(header, 0, os.fstat(fh.fileno()).st_size)


def _walk(header: Callable[[int], bytes], pos: int, end: int) -> Iterator[tuple[str, int, int]]:
    """(type, offset, size) of the boxes from `pos` to `end`, where header(pos) gives the
    (up to 16) bytes of the box header at `pos`, none past `end`. Raises CmafError when a
    box does not fit or bytes are left over."""
    while pos + 8 <= end:
        head = header(pos)
        size, kind = struct.unpack_from(">I4s", head)
        length = 8
        if size == 1:  # 64-bit largesize follows the type
            if len(head) < 16:
                raise CmafError(f"truncated box header at {pos}")
            (size,) = struct.unpack_from(">Q", head, 8)
            length = 16
        elif size == 0:  # the box extends to the end
            size = end - pos
        if size < length or pos + size > end:
            raise CmafError(f"box {kind!r} at {pos} has size {size} beyond {end}")
        yield kind.decode("latin-1"), pos, size
        pos += size
    if pos != end:
        raise CmafError(f"{end - pos} stray bytes at {pos}")


def split_file(fh: BinaryIO) -> tuple[bytes, list[FragmentRange]]:
    """`split` of a file without reading its media data: (init segment, where each fragment
    lies). Memory stays bounded by the largest `moof`, whatever the file's length."""

    def moof_tfdt(pos: int, size: int) -> int:
        fh.seek(pos)
        return tfdt(fh.read(size))

    init_end, fragments = _layout(list(file_boxes(fh)), moof_tfdt)
    fh.seek(0)
    return fh.read(init_end), [FragmentRange(offset=pos, size=end - pos, tfdt=t) for pos, t, end in fragments]


def copy_range(fh: BinaryIO, offset: int, size: int, path: str) -> None:
    """Write bytes [offset, offset + size) of an open file to `path`, in bounded pieces."""
    fh.seek(offset)
    with open(path, "wb") as out:
        left = size
        while left:
            piece = fh.read(min(left, 1 << 20))
            if not piece:
                raise CmafError(f"the file ends {left} bytes early")
            out.write(piece)
            left -= len(piece)


def tfdt(data: bytes, moof_pos: int = 0, moof_size: int | None = None) -> int:
    """baseMediaDecodeTime of the first track fragment of the `moof` at `moof_pos`
    (ISO/IEC 14496-12, 8.8.12); 0 when the fragment has none."""
    moof_size = len(data) - moof_pos if moof_size is None else moof_size
    for kind, pos, size in boxes(data, moof_pos + 8, moof_pos + moof_size):
        if kind != "traf":
            continue
        for inner, ipos, _ in boxes(data, pos + 8, pos + size):
            if inner == "tfdt":
                version = data[ipos + 8]
                if version == 1:
                    return struct.unpack_from(">Q", data, ipos + 12)[0]
                return struct.unpack_from(">I", data, ipos + 12)[0]
    return 0


def first_fragment_tfdt(data: bytes) -> int:
    """The `tfdt` of the first `moof` in a segment file (a fragment, or several)."""
    for kind, pos, size in boxes(data):
        if kind == "moof":
            return tfdt(data, pos, size)
    raise CmafError("no moof in the segment")


def avc_codec_string(init: bytes) -> str | None:
    """The RFC 6381 `CODECS` value of the H.264 track in an init segment, e.g.
    "avc1.64001f" (profile_idc, constraint flags, level_idc from the avcC box,
    ISO/IEC 14496-15 5.3.3.1); None when there is no avcC."""
    at = init.find(b"avcC")
    if at < 4 or at + 8 > len(init):
        return None
    profile, constraints, level = init[at + 5], init[at + 6], init[at + 7]
    return f"avc1.{profile:02x}{constraints:02x}{level:02x}"
