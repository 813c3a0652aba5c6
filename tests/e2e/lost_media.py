"""How an e2e test fails a video now that damaged media no longer does (a truncated or
damaged upload becomes a `ready` video with warnings): media a task needs disappears from
the object store, as a deleted bucket entry or a failed node would make it.

- the upload itself, while its tasks are held (SIGSTOP of the workers): the first task to
  run fails the video with `source_missing`;
- a stored fragment, once the video is playable: the stitch fails it with
  `fragment_missing` after chunk 0 has made it playable.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from shared import topology
from tests.conftest import js_run, nats_servers, service_pids

WORKERS = ("transcoder", "thumbnailer")


def delete_media(mesh, key: str) -> None:
    """Delete one object of the mesh's media store (as the admin user). In a thread of its
    own: a Playwright test's thread already runs an event loop."""

    async def delete(js):
        store = await js.object_store(topology.OBJ_MEDIA)
        await store.delete(key)

    with ThreadPoolExecutor(1) as pool:
        pool.submit(js_run, nats_servers(mesh), delete).result()


@contextmanager
def workers_held(mesh):
    """Every transcoder and thumbnailer stopped (SIGSTOP) inside the block, let go after it."""
    pids = [pid for name, pid in service_pids(mesh).items() if name.startswith(WORKERS)]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def lose_source(mesh, tenant: str, video_id: str) -> None:
    delete_media(mesh, topology.source_key(tenant, video_id))
