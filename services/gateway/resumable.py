"""Resumable uploads (tus): an upload's state on the bus and its bytes in the object store.
No fastapi here: tus.py speaks HTTP, this module keeps the bytes and the state.

Layout. An upload of N bytes becomes the object `<tenant>/<id>/source` without a copy: its
chunks are written PATCH by PATCH under the upload's own chunk subject
(`$O.media.C.<nuid>`) in the object store's wire format, CHUNK_SIZE bytes each, and
completion writes only the object's meta message. The state is one KV entry
(`resumable_uploads`, key `up.<tenant>.<id>`): length, offset, metadata, expiry, chunk
count, the sequence of the last chunk and of every stride-th chunk (the object's seek
index), the tail (the bytes past the last whole chunk: under CHUNK_SIZE, kept in the state
itself so that offset and tail change together) and the lock.

Durability. A PATCH's first chunk is fenced: published with
`Nats-Expected-Last-Subject-Sequence` set to the upload's last recorded chunk, it lands
right after it or not at all. The following chunks go out as the object store's own writes
do (32 acknowledgements in flight). At least every 16 MiB, at every pause of the body
(2 s) and at its end, every chunk sent is acknowledged, the subject's message count is
checked (exactly the recorded chunks and this PATCH's: nothing slipped in among them), and
the state records them (compare-and-set). So a PATCH is durable when it is answered, a
connection that drops keeps what arrived, and a gateway killed mid-PATCH loses only what
it had not recorded yet (at most 16 MiB of it, and nothing of a body that had paused).
HEAD answers the recorded offset. Chunks that landed but were never recorded (the gateway
died in between) make the next writer's fenced first chunk fail: that writer holds the
lock, so those chunks are nobody's; it deletes them and writes again.

A PATCH with `Upload-Checksum` is all or nothing: its chunks land as they come but are
recorded only once the checksum matches; on a mismatch (or a body that stops short) they
are deleted and the state is as before.

The lock. One PATCH at a time per upload: the state names the holder (gateway instance and
request) and an expiry renewed while bytes arrive. A request that finds it held asks the
holder to let go (`gateway.rpc.release_upload.<instance>`): a live holder stops its PATCH,
records what it received and lets go; "no responders" means the holder is gone (killed),
and the lock is taken at once. The fence and the count check make even a holder that lost
its lock without knowing it harmless: what it slips in is found, and not kept.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from shared import topology
from shared.bus import kv_write
from shared.objects import CHUNK_SIZE, MAX_CHECKPOINTS, MEDIA_BYTES, PUBLISH_WINDOW, StoredObject

log = logging.getLogger("vidmesh.gateway.resumable")

WINDOW_CHUNKS = 4  # chunks the reader hands over at a time (1 MiB)
RECORD_CHUNKS = 64  # the state records what is stored at least every 16 MiB (and at every pause)
FLUSH_S = 2.0  # a pause this long in a body records what arrived so far
LEASE_S = 30.0  # the lock's life without news from its holder
IDLE_S = 20.0  # a PATCH body that sends nothing this long is ended (saved) and its lock let go
COMMIT_TIMEOUT_S = 30.0
FINISH_LEASE_S = 180.0  # the lock while a complete upload is probed and announced
RELEASE_TIMEOUT_S = 10.0
WRONG_LAST_SEQUENCE = 10071  # JetStream's err_code when the expectation on the subject failed
HASHERS_KEPT = 4096  # digests of uploads in progress kept in memory (else re-read from the store)


class UploadError(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    message: str


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    owner: str  # the gateway instance
    token: str  # the request holding it
    until: float


class UploadState(msgspec.Struct, frozen=True, kw_only=True):
    id: str  # the upload's id, and the video's it becomes
    tenant: str
    length: int
    created_at: float
    expires_at: float
    nuid: str  # its chunk subject: $O.media.C.<nuid>
    offset: int = 0
    chunks: int = 0  # whole chunks stored (the last one may be short once complete)
    last_seq: int = 0  # stream sequence of the last chunk (0: none)
    stride: int = 1
    seqs: list[int] = []  # sequence of chunks 0, stride, 2*stride, ... (the seek index)
    tail: bytes = b""  # bytes past the last whole chunk, not in the store yet
    metadata: dict[str, str] = {}  # Upload-Metadata, decoded
    raw_metadata: str | None = None  # Upload-Metadata as received (HEAD repeats it)
    status: str = "uploading"  # uploading | complete | done | refused | terminated
    digest: str | None = None  # sha256 of the whole upload, once complete (base64url)
    lease: Lease | None = None
    error: UploadError | None = None  # why the probe refused it
    direct: str | None = None  # the direct-upload URL it was created through (its id)
    finished_at: float | None = None  # done, refused or terminated at

    @property
    def key(self) -> str:
        return upload_key(self.tenant, self.id)

    @property
    def source(self) -> str:
        return topology.source_key(self.tenant, self.id)

    @property
    def filename(self) -> str | None:
        name = (self.metadata.get("filename") or "").strip()
        return name[:255] or None


class DirectUpload(msgspec.Struct, frozen=True, kw_only=True):
    """A one-time upload URL: creates at most one upload, for one tenant, until it expires."""

    id: str
    tenant: str
    created_at: float
    expires_at: float
    max_size: int
    upload_id: str | None = None  # set (compare-and-set) by the one creation it allows
    metadata: dict[str, str] = {}


_encode = msgspec.json.Encoder().encode
_state = msgspec.json.Decoder(UploadState)
_direct = msgspec.json.Decoder(DirectUpload)


def upload_key(tenant: str, upload_id: str) -> str:
    return f"up.{tenant}.{upload_id}"


def direct_key(token: str) -> str:
    """The KV key of a direct-upload URL: a digest of its secret, so the bucket's readers
    cannot rebuild the URL."""
    return "du." + hashlib.sha256(token.encode()).hexdigest()[:48]


def stride_for(length: int) -> int:
    return max(1, math.ceil(math.ceil(length / CHUNK_SIZE) / MAX_CHECKPOINTS))


# --- the outcomes a caller maps to HTTP ---------------------------------------------------------


class UploadProblem(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def locked(message: str = "another request is writing this upload; retry shortly") -> UploadProblem:
    return UploadProblem(423, "upload_locked", message, {"Retry-After": "2"})


class StoreFailed(Exception):
    """The object store did not take a chunk (the bus is away, or the chunk was refused)."""


@dataclass
class PatchResult:
    state: UploadState
    revision: int
    received: int  # bytes of the body taken
    ended: str  # eof | disconnect | idle | released
    checksum_ok: bool | None = None  # None: no checksum asked


@dataclass
class Held:
    """An upload whose lock this request holds: its latest state and revision. A release
    request (another request wants the upload) sets `release`; the PATCH in hand then stops,
    records what it received, and `done` tells the asker the lock is free."""

    state: UploadState
    revision: int
    token: str
    release: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Uploads:
    """Resumable uploads of one gateway process."""

    def __init__(self, bus, instance: str | None = None):
        self.bus = bus
        self.instance = instance or secrets.token_hex(8)
        self.active: dict[str, Held] = {}
        self._hashers: OrderedDict[str, tuple[int, int, object]] = OrderedDict()
        # the last state this process wrote of each upload: the next PATCH's compare-and-set
        # starts from it (and reads the bucket only when someone else wrote since)
        self._written: OrderedDict[str, tuple[UploadState, int]] = OrderedDict()
        self._sub = None
        self._releasing: set[asyncio.Task] = set()

    @property
    def js(self):
        return self.bus.js

    async def kv(self):
        return await self.bus.kv(topology.KV_RESUMABLE)

    async def start(self) -> None:
        """Answer release requests for the locks this process holds."""
        self._sub = await self.bus.nc.subscribe(
            f"{topology.RPC_GATEWAY_RELEASE_UPLOAD}.{self.instance}", cb=self._on_release_request
        )

    async def _on_release_request(self, msg) -> None:
        # nats-py runs one subscription's callbacks one at a time: each waits on its own task
        task = asyncio.create_task(self._on_release(msg))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _on_release(self, msg) -> None:
        key = msg.data.decode(errors="replace")
        held = self.active.get(key)
        if held is not None:
            held.release.set()
            try:
                await asyncio.wait_for(held.done.wait(), RELEASE_TIMEOUT_S - 1)
            except TimeoutError:
                return  # no answer: the asker treats it as held
        try:
            await msg.respond(b"released")
        except Exception:
            pass

    # --- reading and writing the state ---------------------------------------------------------

    async def load(self, tenant: str, upload_id: str) -> tuple[UploadState, int] | None:
        if not (0 < len(upload_id) <= 64 and upload_id.isascii() and upload_id.isalnum()):
            return None
        try:
            entry = await (await self.kv()).get(upload_key(tenant, upload_id))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return _state.decode(entry.value), entry.revision

    async def save(self, state: UploadState, revision: int | None) -> int:
        """Compare-and-set; KeyWrongLastSequenceError when someone else wrote meanwhile."""
        revision = await kv_write(await self.kv(), state.key, _encode(state), revision)
        self._written[state.key] = (state, revision)
        self._written.move_to_end(state.key)
        while len(self._written) > HASHERS_KEPT:
            self._written.popitem(last=False)
        return revision

    async def create(
        self,
        tenant: str,
        upload_id: str,
        length: int,
        *,
        metadata: dict[str, str],
        raw_metadata: str | None,
        expires_at: float,
        direct: str | None = None,
        lock_token: str | None = None,
    ) -> tuple[UploadState, int]:
        now = time.time()
        state = UploadState(
            id=upload_id,
            tenant=tenant,
            length=length,
            created_at=now,
            expires_at=expires_at,
            nuid=self.bus.nc._nuid.next().decode(),
            stride=stride_for(length),
            metadata=metadata,
            raw_metadata=raw_metadata,
            direct=direct,
            lease=self._lease(lock_token) if lock_token else None,
        )
        return state, await self.save(state, None)

    def _lease(self, token: str) -> Lease:
        return Lease(owner=self.instance, token=token, until=time.time() + LEASE_S)

    # --- the lock ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def hold(
        self, tenant: str, upload_id: str, token: str | None = None, created: tuple[UploadState, int] | None = None
    ) -> AsyncIterator[Held]:
        """Hold the upload's lock for the block (`created`: an upload just created with its
        lease already ours). UploadProblem 404 when it is gone, 423 when its holder does not
        let go. Leaving the block lets go of the lock (if it is still ours)."""
        token = token or secrets.token_hex(8)
        state, revision = created or await self._acquire(tenant, upload_id, token)
        held = Held(state, revision, token)
        self.active[state.key] = held
        try:
            yield held
        finally:
            try:
                if held.state.lease is not None and held.state.lease.token == token:
                    held.state, held.revision = await asyncio.shield(self.unlock(held.state, held.revision, token))
            except Exception:
                log.warning("upload %s: could not let go of its lock (it expires)", state.key, exc_info=True)
            finally:
                held.done.set()
                if self.active.get(state.key) is held:
                    del self.active[state.key]

    async def _acquire(self, tenant: str, upload_id: str, token: str) -> tuple[UploadState, int]:
        for attempt in range(10):
            found = self._written.get(upload_key(tenant, upload_id)) if attempt == 0 else None
            if found is None or found[0].status == "terminated":
                found = await self.load(tenant, upload_id)
            if found is None:
                raise UploadProblem(404, "not_found", f"no upload {upload_id}")
            state, revision = found
            lease = state.lease
            if lease is not None and lease.until > time.time():
                if not await self._ask_release(lease, state.key):
                    raise locked()
                found = await self.load(tenant, upload_id)
                if found is not None and found[0].lease == lease:
                    # Its holder says it holds nothing (a request that died without letting
                    # go): the lock is free.
                    state, revision = found[0], found[1]
                else:
                    continue  # it let go: read the state it left
            try:
                mine = msgspec.structs.replace(state, lease=self._lease(token))
                return mine, await self.save(mine, revision)
            except KeyWrongLastSequenceError:
                continue
        raise locked()

    async def _ask_release(self, lease: Lease, key: str) -> bool:
        """Whether the holder let go (or is gone, its lock free to take)."""
        subject = f"{topology.RPC_GATEWAY_RELEASE_UPLOAD}.{lease.owner}"
        try:
            await self.bus.nc.request(subject, key.encode(), timeout=RELEASE_TIMEOUT_S)
        except NoRespondersError:
            # Its gateway is gone: take over. If it is only cut off from NATS, what it still sends
            # is found by the fence or the count check, and its state write fails its revision.
            found = await self.load(*_split(key))
            if found is not None and found[0].lease == lease:
                freed = msgspec.structs.replace(found[0], lease=None)
                try:
                    await self.save(freed, found[1])
                except KeyWrongLastSequenceError:
                    pass
            return True
        except (TimeoutError, NatsTimeout):
            return False
        return True

    async def unlock(self, state: UploadState, revision: int, token: str) -> tuple[UploadState, int]:
        if state.lease is None or state.lease.token != token:
            return state, revision
        free = msgspec.structs.replace(state, lease=None)
        try:
            return free, await self.save(free, revision)
        except KeyWrongLastSequenceError:
            return state, revision  # taken over: it is not ours to free

    # --- writing bytes -------------------------------------------------------------------------

    async def patch(self, held: Held, body: AsyncIterator[bytes], *, checksum: bytes | None = None) -> PatchResult:
        """Append a PATCH body at the upload's offset (the caller holds the lock and checked
        the offset). Whole chunks go out as they arrive (the first one fenced); what is left when
        the body ends is recorded as the tail (or, when it completes the upload, as the last
        chunk). `checksum`: the sha256 the body must have, else nothing of it is kept."""
        result = await _Patch(self, held, checksum).run(body)
        held.state, held.revision = result.state, result.revision
        return result

    async def _hasher(self, state: UploadState):
        """sha256 of the upload's whole chunks; from memory when this process wrote them,
        else read back from the store (a PATCH after another replica's)."""
        kept = self._hashers.get(state.key)
        if kept is not None and kept[:2] == (state.chunks, state.last_seq):
            self._hashers.move_to_end(state.key)
            return kept[2].copy()
        hasher = hashlib.sha256()
        if state.chunks:
            info = StoredObject(
                name=state.source, bucket=topology.OBJ_MEDIA, nuid=state.nuid, size=state.offset, chunks=state.chunks
            )
            first = state.seqs[0] if state.seqs else 1
            async for _, _, data in self.bus.media.chunks(info, 0, first):
                hasher.update(data)
        return hasher

    def _keep_hasher(self, state: UploadState, hasher) -> None:
        self._hashers[state.key] = (state.chunks, state.last_seq, hasher.copy())
        self._hashers.move_to_end(state.key)
        while len(self._hashers) > HASHERS_KEPT:
            self._hashers.popitem(last=False)

    def forget(self, key: str) -> None:
        self._hashers.pop(key, None)

    async def _commit_window(self, subject: str, chunks: list[bytes], after: int, expect_total: int) -> list[int]:
        """Store `chunks` on `subject` right after sequence `after`; returns the last one's
        sequence. The first chunk is fenced (`Nats-Expected-Last-Subject-Sequence`) and
        acknowledged before the others go, pipelined as the object store's own writes; then
        the subject must hold exactly `expect_total` messages, so nothing slipped in between
        (a writer that lost the lock without knowing it). If something did, this window's
        chunks are deleted and the PATCH fails. Returns the chunks' sequences."""
        js = self.bus.js
        try:
            first = await js.publish(
                subject,
                chunks[0],
                headers={"Nats-Expected-Last-Subject-Sequence": str(after)},
                timeout=COMMIT_TIMEOUT_S,
            )
        except APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise _Fenced(exc.description or "wrong last sequence") from None
            raise StoreFailed(f"the object store refused a chunk: {exc.description}") from None
        except (TimeoutError, NatsTimeout, NoRespondersError) as exc:
            raise StoreFailed(f"no acknowledgement of a chunk ({exc!r})") from None
        seqs = [first.seq]
        pending = [await js.publish_async(subject, data) for data in chunks[1:]]
        try:
            for fut in pending:
                seqs.append((await asyncio.wait_for(fut, COMMIT_TIMEOUT_S)).seq)
        except (TimeoutError, APIError) as exc:
            await self._delete_seqs(seqs)
            raise StoreFailed(f"a chunk was not stored ({exc!r})") from None
        info = await js.stream_info(self.bus.media.stream, subjects_filter=subject)
        if (info.state.subjects or {}).get(subject, 0) != expect_total:
            await self._delete_seqs(seqs)
            raise _Fenced("a chunk of another writer slipped in between")
        return seqs

    async def _delete_seqs(self, seqs: list[int]) -> None:
        for seq in seqs:
            try:
                await self._delete(seq)
            except Exception:
                return  # the next writer's fence finds the rest

    async def _delete_after(self, subject: str, seq: int) -> int:
        """Delete every message of `subject` after sequence `seq` (chunks no state recorded)."""
        stream, deleted = self.bus.media.stream, 0
        while True:
            try:
                msg = await self.js.get_msg(stream, seq=seq + 1, subject=subject, next=True)
            except NotFoundError:
                return deleted
            await self._delete(msg.seq)
            deleted += 1
            seq = msg.seq

    async def _delete(self, seq: int) -> None:
        stream = self.bus.media.stream
        # no_erase: the bytes are dropped, not overwritten first (they were never anyone's)
        await self.js._api_request(
            f"$JS.API.STREAM.MSG.DELETE.{stream}", json.dumps({"seq": seq, "no_erase": True}).encode(), timeout=10
        )

    # --- completion, termination -----------------------------------------------------------------

    async def finish(self, held: Held, announce: Callable[[UploadState], Awaitable[object]]) -> object:
        """Make the complete upload a video (`held`: its lock): commit the object (its meta
        message only), then `announce` (probe, publish), then record the outcome in
        `held.state`. `announce` raises UploadProblem 422 (a refusal: recorded, the object
        deleted) or anything else (left `complete`, so a retry finishes it)."""
        state = held.state
        if state.lease is not None:  # the probe may take longer than a lease: hold it that long
            busy = msgspec.structs.replace(
                state, lease=msgspec.structs.replace(state.lease, until=time.time() + FINISH_LEASE_S)
            )
            held.revision = await self.save(busy, held.revision)
            held.state = state = busy
        store = self.bus.media
        info = await store.info(state.source)
        if info is None or info.nuid != state.nuid:
            digest = _Digest(base64.urlsafe_b64decode(state.digest or ""))
            await store.commit_chunks(
                state.source, state.nuid, state.length, state.chunks, digest, state.stride, state.seqs
            )
        try:
            result = await announce(state)
        except UploadProblem as exc:
            if exc.status != 422:
                raise
            await store.delete(state.source)
            refused = msgspec.structs.replace(
                state,
                status="refused",
                error=UploadError(code=exc.code, message=exc.message),
                lease=None,
                finished_at=time.time(),
                tail=b"",
            )
            held.revision = await self.save(refused, held.revision)
            held.state = refused
            return exc
        done = msgspec.structs.replace(state, status="done", lease=None, finished_at=time.time(), tail=b"")
        self.forget(state.key)
        log.info("upload %s: complete, %d bytes in %d chunks, announced", state.key, state.length, state.chunks)
        held.revision = await self.save(done, held.revision)
        held.state = done
        return result

    async def terminate(self, state: UploadState, revision: int) -> tuple[UploadState, int]:
        """Termination: the state stays as a tombstone (410) until the scheduled clean-up;
        the bytes go now, unless they already became a video."""
        gone = msgspec.structs.replace(
            state, status="terminated", lease=None, tail=b"", finished_at=time.time(), seqs=[]
        )
        revision = await self.save(gone, revision)
        if state.status in ("uploading", "complete"):
            if state.status == "complete" and (info := await self.bus.media.info(state.source)) is not None:
                if info.nuid == state.nuid:
                    await self.bus.media.delete(state.source)
            await self.bus.media.purge_chunks(state.nuid)
        self.forget(state.key)
        return gone, revision

    # --- direct uploads ------------------------------------------------------------------------

    async def create_direct(
        self, tenant: str, *, expires_at: float, max_size: int, metadata: dict[str, str]
    ) -> tuple[str, DirectUpload]:
        token = secrets.token_urlsafe(32)
        record = DirectUpload(
            id="du_" + secrets.token_hex(10),
            tenant=tenant,
            created_at=time.time(),
            expires_at=expires_at,
            max_size=max_size,
            metadata=metadata,
        )
        await kv_write(await self.kv(), direct_key(token), _encode(record), None)
        return token, record

    async def load_direct(self, token: str) -> tuple[DirectUpload, int] | None:
        if not (20 <= len(token) <= 100 and token.isascii() and all(c.isalnum() or c in "-_" for c in token)):
            return None
        try:
            entry = await (await self.kv()).get(direct_key(token))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return _direct.decode(entry.value), entry.revision

    async def claim_direct(self, token: str, record: DirectUpload, revision: int, upload_id: str) -> bool:
        """The one creation a direct-upload URL allows (compare-and-set)."""
        used = msgspec.structs.replace(record, upload_id=upload_id)
        try:
            await kv_write(await self.kv(), direct_key(token), _encode(used), revision)
            return True
        except KeyWrongLastSequenceError:
            return False


def _split(key: str) -> tuple[str, str]:
    _, tenant, upload_id = key.split(".", 2)
    return tenant, upload_id


class _Fenced(Exception):
    """The subject's last chunk is not the one expected: someone else wrote meanwhile."""


class _Digest:
    """A finished digest in hashlib's shape, for MediaStore.commit_chunks."""

    def __init__(self, value: bytes):
        self.value = value

    def digest(self) -> bytes:
        return self.value


class _Patch:
    """One PATCH: a reader task cuts the body into whole chunks (a few at a time) while this
    side stores the previous ones, so receiving and storing overlap; a few MiB and a
    chunk are in memory."""

    def __init__(self, uploads: Uploads, held: Held, checksum):
        self.u, self.held = uploads, held
        self.state, self.revision, self.token = held.state, held.revision, held.token
        self.checksum = checksum
        state = held.state
        self.subject = uploads.bus.media.chunk_subject(state.nuid)
        self.last_seq = state.last_seq  # the subject's last chunk (recorded or not)
        self.unrecorded: list[int] = []  # sequences of the chunks stored but not in the state yet
        self.inflight: deque = deque()  # acknowledgements still to come, in order
        self.chunks = state.chunks  # chunks sent, recorded or not
        self.seqs = list(state.seqs)  # the seek index up to the last checkpoint
        self.index_at: list[int] = []  # chunks sent since, whose sequence joins the seek index
        self.fenced = False

    async def run(self, body: AsyncIterator[bytes]) -> PatchResult:
        state = self.state
        hasher = await self.u._hasher(state)
        whole = hashlib.sha256() if self.checksum is not None else None
        remaining = state.length - state.offset
        windows: asyncio.Queue = asyncio.Queue(maxsize=1)
        reader = _Reader(body, state.tail, remaining, whole, self.held.release)
        task = asyncio.create_task(reader.run(windows))
        last_renew = time.monotonic()
        try:
            while True:
                try:
                    kind, payload = await asyncio.wait_for(windows.get(), LEASE_S / 3)
                except TimeoutError:
                    if reader.last_byte > last_renew:  # a slow body: keep the lock while it flows
                        await self._record(hasher, renew_only=True)
                        last_renew = time.monotonic()
                    continue
                if kind in ("window", "pause"):
                    if payload:
                        await self._store(payload, hasher)
                    stored = len(self.unrecorded) + len(self.inflight)
                    if self.checksum is None and stored and (stored >= RECORD_CHUNKS or kind == "pause"):
                        await self._checkpoint()
                        await self._record(hasher)
                        last_renew = time.monotonic()
                    elif reader.last_byte > last_renew and time.monotonic() - last_renew > LEASE_S / 3:
                        await self._record(hasher, renew_only=True)  # a trickle: keep the lock
                        last_renew = time.monotonic()
                    continue
                break  # "end": payload is the rest (under a chunk), the body is over
            if kind == "error":
                raise payload
            rest: bytes = payload
            received = reader.received
            ok = None
            await self._checkpoint()
            if self.checksum is not None:
                ok = reader.ended == "eof" and whole.digest() == self.checksum
                if not ok:  # keep nothing of it
                    await self._drop_unrecorded()
                    self.u.forget(state.key)
                    return PatchResult(self.state, self.revision, received, reader.ended, ok)
            complete = state.offset + received == state.length
            if complete:
                if rest:
                    await self._store([rest], hasher)
                    await self._checkpoint()
                rest = b""
            # the last write of the PATCH lets go of the lock too, unless the video is still to be made
            await self._record(hasher, tail=rest, complete=complete, unlock=not complete)
            return PatchResult(self.state, self.revision, received, reader.ended, ok)
        except BaseException:
            self.u.forget(state.key)  # the digest in memory may hold unrecorded chunks
            await asyncio.shield(self._abandon())
            raise
        finally:
            task.cancel()

    async def _store(self, chunks: list[bytes], hasher) -> None:
        """Send chunks as the object store's own writes do, 32 acknowledgements in flight. The
        PATCH's first chunk is fenced: it must land right after the upload's last recorded
        chunk, so nothing another writer left there gets in between; `_checkpoint` then checks
        that nothing slipped in among ours."""
        js = self.u.bus.js
        for data in chunks:
            if not self.fenced:
                await self._fenced_first(data)
            else:
                self.inflight.append(await js.publish_async(self.subject, data))
                if len(self.inflight) >= PUBLISH_WINDOW:
                    self.unrecorded.append(await self._ack(self.inflight.popleft()))
            index = self.chunks
            self.chunks += 1
            if index % self.state.stride == 0:
                self.index_at.append(index)
            hasher.update(data)
            MEDIA_BYTES.labels("in").inc(len(data))

    async def _fenced_first(self, data: bytes) -> None:
        try:
            seqs = await self.u._commit_window(self.subject, [data], self.last_seq, self.chunks + 1)
        except _Fenced:
            if self.last_seq != self.state.last_seq:
                raise locked("another request wrote this upload meanwhile; resume from HEAD's offset") from None
            # Chunks past the recorded ones: their writer died before recording them.
            # We hold the lock: they are nobody's.
            dropped = await self.u._delete_after(self.subject, self.last_seq)
            log.info("upload %s: dropped %d chunks no state recorded", self.state.key, dropped)
            seqs = await self.u._commit_window(self.subject, [data], self.last_seq, self.chunks + 1)
        self.unrecorded += seqs
        self.fenced = True

    async def _ack(self, future) -> int:
        try:
            return (await asyncio.wait_for(future, COMMIT_TIMEOUT_S)).seq
        except (TimeoutError, APIError) as exc:
            raise StoreFailed(f"a chunk was not stored ({exc!r})") from None

    async def _checkpoint(self) -> None:
        """Every chunk sent is acknowledged, and the subject holds exactly the recorded chunks
        and ours: a writer that lost the lock without knowing it slipped nothing in."""
        while self.inflight:
            self.unrecorded.append(await self._ack(self.inflight.popleft()))
        if not self.unrecorded:
            return
        subject = self.subject
        info = await self.u.js.stream_info(self.u.bus.media.stream, subjects_filter=subject)
        if (info.state.subjects or {}).get(subject, 0) != self.chunks:
            await self._drop_unrecorded()
            raise locked("another writer's chunks slipped in among this PATCH's; resume from HEAD's offset")
        recorded = self.chunks - len(self.unrecorded)
        for index in self.index_at:
            self.seqs.append(self.unrecorded[index - recorded])
        self.index_at = []
        self.last_seq = self.unrecorded[-1]

    async def _record(
        self, hasher, *, tail: bytes = b"", complete: bool = False, renew_only: bool = False, unlock: bool = False
    ) -> None:
        """Write the state: what is stored so far (all of it with a checksum: only at the end)."""
        s = self.state
        if renew_only:
            new = msgspec.structs.replace(s, lease=self.u._lease(self.token))
        else:
            stored_bytes = self.chunks * CHUNK_SIZE if not complete else s.length
            new = msgspec.structs.replace(
                s,
                chunks=self.chunks,
                last_seq=self.last_seq,
                seqs=list(self.seqs),
                offset=min(s.length, stored_bytes + len(tail)),
                tail=tail,
                status="complete" if complete else s.status,
                digest=base64.urlsafe_b64encode(hasher.digest()).decode() if complete else None,
                lease=None if unlock else self.u._lease(self.token),
            )
        if s.lease is None or s.lease.token != self.token:
            raise locked("this request no longer holds the upload's lock")
        try:
            self.revision = await self.u.save(new, self.revision)
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            raise locked("this upload changed under this request (taken over, terminated or expired)") from None
        self.state = new
        self.held.state, self.held.revision = new, self.revision
        if not renew_only:
            self.unrecorded.clear()
            self.u._keep_hasher(new, hasher)

    async def _drop_unrecorded(self) -> None:
        while self.inflight:
            try:
                self.unrecorded.append(await self._ack(self.inflight.popleft()))
            except Exception:
                pass
        await self.u._delete_seqs(self.unrecorded)
        self.unrecorded = []

    async def _abandon(self) -> None:
        """A failed PATCH: drop the chunks it stored but did not record (the lock is let go
        by the caller's `hold`)."""
        try:
            await self._drop_unrecorded()
        except Exception:
            pass  # the next writer's fence finds them


class _Reader:
    """Reads a PATCH body into windows of whole chunks (the first chunk starts with the
    upload's tail), on its own task so the next window arrives while one is stored."""

    def __init__(self, body: AsyncIterator[bytes], tail: bytes, remaining: int, whole, release: asyncio.Event):
        self.body, self.carry, self.remaining = body, bytearray(tail), remaining
        self.whole, self.release = whole, release
        self.received = 0
        self.last_byte = time.monotonic()
        self.ended = "eof"

    async def run(self, out: asyncio.Queue) -> None:
        window: list[bytes] = []
        since = time.monotonic()
        it = self.body.__aiter__()
        pending = None  # the body read in progress: kept across pauses, never cancelled mid-way
        stop = asyncio.ensure_future(self.release.wait())
        idle = 0.0
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(it.__anext__())
                done, _ = await asyncio.wait({pending, stop}, timeout=FLUSH_S, return_when=asyncio.FIRST_COMPLETED)
                if pending not in done:
                    if self.release.is_set():
                        self.ended = "released"
                        break
                    # A pause: what arrived in whole chunks is stored now, not when more comes.
                    idle += FLUSH_S
                    await out.put(("pause", window))
                    window, since = [], time.monotonic()
                    if idle >= IDLE_S:
                        self.ended = "idle"
                        break
                    continue
                done_read, pending, idle = pending, None, 0.0
                try:
                    piece = done_read.result()
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    if type(exc).__name__ == "ClientDisconnect":
                        self.ended = "disconnect"
                        break
                    raise
                if not piece:
                    continue
                if self.received + len(piece) > self.remaining:
                    raise UploadProblem(
                        413, "too_large", f"the body passes Upload-Length: {self.remaining} bytes were left to send"
                    )
                self.received += len(piece)
                self.last_byte = time.monotonic()
                if self.whole is not None:
                    self.whole.update(piece)
                self.carry += piece
                while len(self.carry) >= CHUNK_SIZE:
                    window.append(bytes(self.carry[:CHUNK_SIZE]))
                    del self.carry[:CHUNK_SIZE]
                if len(window) >= WINDOW_CHUNKS or (window and time.monotonic() - since >= FLUSH_S):
                    await out.put(("window", window))
                    window, since = [], time.monotonic()
            if window:
                await out.put(("window", window))
            await out.put(("end", bytes(self.carry)))
        except Exception as exc:
            await out.put(("error", exc))
        finally:
            stop.cancel()
            if pending is not None and not pending.done():
                pending.cancel()
