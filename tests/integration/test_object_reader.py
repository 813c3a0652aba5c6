"""A stored object read as a seekable file from a worker thread (ObjectReader), against a
real nats-server: random reads match the bytes, and the thumbnailer's demuxer reads a few
chunks of a large video instead of the whole object."""

from __future__ import annotations

import asyncio
import io
import os
import random

from prometheus_client import REGISTRY

from services.thumbnailer.snapshot import first_frame_jpeg
from shared.objects import CHUNK_SIZE, ObjectReader
from tests.clips import make_clip


def _bytes_read() -> float:
    return REGISTRY.get_sample_value("vidmesh_media_bytes_total", {"direction": "out"}) or 0.0


async def test_random_reads_and_seeks_match_the_stored_bytes(bus):
    data = random.Random(5).randbytes(CHUNK_SIZE * 40 + 1234)  # 41 chunks: checkpoint stride 1
    info = await bus.media.put_stream("t/reader/random", _once(data))
    reader = ObjectReader(bus.media, info, asyncio.get_running_loop())

    def read_around() -> list[tuple[int, bytes, bytes]]:
        rng = random.Random(9)
        seen = []
        for _ in range(60):
            offset, n = rng.randrange(len(data)), rng.choice([1, 100, CHUNK_SIZE - 3, 3 * CHUNK_SIZE])
            reader.seek(offset)
            seen.append((offset, reader.read(n), data[offset : offset + n]))
        reader.seek(-10, io.SEEK_END)
        seen.append((len(data) - 10, reader.read(), data[-10:]))
        seen.append((len(data), reader.read(5), b""))  # at the end: EOF
        return seen

    for offset, got, want in await asyncio.to_thread(read_around):
        assert got == want, offset


async def test_the_thumbnail_of_a_stored_video_reads_a_few_chunks_of_it(bus, tmp_path):
    # frames first, index (moov) at the end, as a camera writes it; > 3 MiB
    path = make_clip(str(tmp_path / "camera.mp4"), width=1280, height=720, seconds=4.0, rotation=90)
    size = os.path.getsize(path)
    info = await bus.media.put_file("t/reader/camera", path)
    before = _bytes_read()
    reader = ObjectReader(bus.media, info, asyncio.get_running_loop())
    got = await asyncio.to_thread(first_frame_jpeg, reader, str(tmp_path / "stored.jpg"), max_width=320)
    fetched = _bytes_read() - before

    want = first_frame_jpeg(path, str(tmp_path / "local.jpg"), max_width=320)
    assert got == want == (320, 568)  # upright (720x1280 shown): the rotation came through too
    assert (tmp_path / "stored.jpg").read_bytes() == (tmp_path / "local.jpg").read_bytes()
    assert fetched <= 4 * CHUNK_SIZE < size, (fetched, size)


async def _once(data: bytes):
    yield data
