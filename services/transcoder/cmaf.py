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
from collections.abc import Iterator
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
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:  # 64-bit largesize follows the type
            if pos + 16 > end:
                raise CmafError(f"truncated box header at {pos}")
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:  # the box extends to the end
            size = end - pos
        if size < header or pos + size > end:
            raise CmafError(f"box {kind!r} at {pos} has size {size} beyond {end}")
        yield kind.decode("latin-1"), pos, size
        pos += size
    if pos != end:
        raise CmafError(f"{end - pos} stray bytes at {pos}")


def split(data: bytes) -> tuple[bytes, list[Fragment]]:
    """A fragmented MP4 file -> (init segment, fragments in file order).

    Raises CmafError when there is no `moov` or a `moof` is not followed by its `mdat`."""
    init_end = None
    fragments: list[Fragment] = []
    pending: tuple[int, int] | None = None  # the moof waiting for its mdat
    for kind, pos, size in boxes(data):
        if kind == "moov":
            init_end = pos + size
        elif kind == "moof":
            if pending is not None:
                raise CmafError(f"moof at {pending[0]} without an mdat")
            pending = (pos, size)
        elif kind == "mdat":
            if pending is None:
                raise CmafError(f"mdat at {pos} without a moof")
            moof_pos, moof_size = pending
            fragments.append(Fragment(tfdt=tfdt(data, moof_pos, moof_size), data=data[moof_pos : pos + size]))
            pending = None
    if init_end is None:
        raise CmafError("no moov: not an MP4 init segment")
    if pending is not None:
        raise CmafError("the last moof has no mdat")
    return data[:init_end], fragments


@dataclass(frozen=True)
class FragmentRange:
    """Where one `moof` + `mdat` lies in a file (bytes), and its `tfdt`."""

    offset: int
    size: int
    tfdt: int


def file_boxes(fh: BinaryIO) -> Iterator[tuple[str, int, int]]:
    """(type, offset, size) of the top-level boxes of a file, reading only their headers."""
    end = os.fstat(fh.fileno()).st_size
    pos = 0
    while pos + 8 <= end:
        fh.seek(pos)
        header = fh.read(16)
        size, kind = struct.unpack_from(">I4s", header)
        if size == 1:
            (size,) = struct.unpack_from(">Q", header, 8)
        elif size == 0:
            size = end - pos
        if size < 8 or pos + size > end:
            raise CmafError(f"box {kind!r} at {pos} has size {size} beyond {end}")
        yield kind.decode("latin-1"), pos, size
        pos += size
    if pos != end:
        raise CmafError(f"{end - pos} stray bytes at {pos}")


def split_file(fh: BinaryIO) -> tuple[bytes, list[FragmentRange]]:
    """`split` of a file without reading its media data: (init segment, where each fragment
    lies). Memory stays bounded by the largest `moof`, whatever the file's length."""
    init_end = None
    fragments: list[FragmentRange] = []
    pending: tuple[int, int, int] | None = None  # the moof waiting for its mdat: pos, size, tfdt
    for kind, pos, size in list(file_boxes(fh)):
        if kind == "moov":
            init_end = pos + size
        elif kind == "moof":
            if pending is not None:
                raise CmafError(f"moof at {pending[0]} without an mdat")
            fh.seek(pos)
            pending = (pos, size, tfdt(fh.read(size)))
        elif kind == "mdat":
            if pending is None:
                raise CmafError(f"mdat at {pos} without a moof")
            fragments.append(FragmentRange(offset=pending[0], size=pos + size - pending[0], tfdt=pending[2]))
            pending = None
    if init_end is None:
        raise CmafError("no moov: not an MP4 init segment")
    if pending is not None:
        raise CmafError("the last moof has no mdat")
    fh.seek(0)
    return fh.read(init_end), fragments


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
