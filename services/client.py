"""The people's side of the API: `vidmesh upload/ls/status/download/url/rm/events`.

An HTTP client of the gateway (it never touches NATS), registered on the `vidmesh` typer
app by `register(cli)`. Server and key come from `--url`/`--api-key`, else
`VIDMESH_URL`/`VIDMESH_API_KEY`, else http://127.0.0.1:8080 and the dev key `vidmesh up`
wrote to `$VIDMESH_DATA_DIR/dev-api-key`.

Human output goes to stdout, progress bars and errors to stderr; `--json` prints JSON on
stdout instead (one document per line where a command can print several). A refused
request prints the server's `code: message` and exits 1, never a traceback.

Exit codes: 0 success, 1 the request failed (server error, unreachable, bad input),
2 bad usage, 3 the video failed processing (`upload --wait`).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import mimetypes
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated
from urllib.parse import quote, urlencode

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from shared.contracts import AUDIO_TASK, THUMBNAIL_TASK
from shared.settings import Settings

from . import tusclient

DEFAULT_URL = "http://127.0.0.1:8080"
EXIT_ERROR = 1
EXIT_VIDEO_FAILED = 3
TERMINAL_EVENTS = ("video_ready", "video_failed", "video_deleted")
CHUNK = 256 * 1024

# Piped output is not cut to 80 columns: whole ids and URLs are what a reader greps for.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


# --- the HTTP client ---------------------------------------------------------------------------


class ApiError(Exception):
    """A refused request, with the server's stable code (or a local one: `unreachable`)."""

    def __init__(self, code: str, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status, self.retry_after = code, message, status, retry_after


class Client:
    def __init__(self, url: str, api_key: str, timeout: float = 60.0, transport: httpx.BaseTransport | None = None):
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "vidmesh-cli"},
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _send(self, method: str, path: str, *, stream: bool = False, **kw) -> httpx.Response:
        try:
            request = self.http.build_request(method, path, **kw)
            response = self.http.send(request, stream=stream)
        except httpx.ConnectError as exc:
            raise ApiError("unreachable", f"cannot reach {self.url}: {exc or type(exc).__name__}") from None
        except httpx.TransportError as exc:
            raise ApiError("connection_lost", f"{method} {path}: {exc or type(exc).__name__}") from None
        if response.status_code >= 400:
            if stream:
                response.read()
            raise _api_error(response)
        return response

    def get_json(self, path: str, **params) -> dict:
        return self._send("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def video(self, video_id: str) -> dict:
        return self.get_json(f"/v1/videos/{_segment(video_id)}")

    def videos(self, limit: int = 20, cursor: str | None = None) -> dict:
        return self.get_json("/v1/videos", limit=limit, cursor=cursor)

    def delete(self, video_id: str) -> dict:
        return self._send("DELETE", f"/v1/videos/{_segment(video_id)}").json()

    def upload(
        self, path: Path, on_progress: Callable[[int], None] | None = None, idempotency_key: str | None = None
    ) -> dict:
        """Stream a file as multipart (keeps any filename intact); on_progress(bytes sent)."""
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        with path.open("rb") as f:
            body = _Reading(f, on_progress)
            # a generous read timeout: the gateway probes the upload before it answers
            return self._send(
                "POST",
                "/v1/videos",
                files={"file": (path.name, body, ctype)},
                headers=headers,
                timeout=httpx.Timeout(300, connect=10),
            ).json()

    def events(self, video_id: str, reconnects: int = 5) -> Iterator[tuple[str, dict, str | None]]:
        """(event name, data, id) from the SSE stream until it ends; reconnects if it drops.

        The gateway replays a video's history on every connection, so after a reconnect
        events already seen (by id) are skipped.
        """
        seen: set[str] = set()
        attempt = 0
        while True:
            try:
                with closing(
                    self._send(
                        "GET",
                        f"/v1/videos/{_segment(video_id)}/events",
                        stream=True,
                        headers={"Accept": "text/event-stream"},
                        timeout=httpx.Timeout(60.0, connect=10.0),  # keep-alives come every 15 s
                    )
                ) as response:
                    for name, data, event_id in parse_sse(response.iter_lines()):
                        attempt = 0
                        if event_id is not None:
                            if event_id in seen:
                                continue
                            seen.add(event_id)
                        yield name, data, event_id
                return  # the server ended the stream: a terminal state was reached
            except (httpx.TransportError, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.code not in ("unreachable", "connection_lost"):
                    raise
                attempt += 1
                if attempt > reconnects:
                    raise ApiError("unreachable", f"the event stream of {video_id} broke: {exc}") from None
                time.sleep(min(0.5 * 2**attempt, 5.0))

    def playback_url(self, video_id: str) -> dict:
        """{"url", "expires_at"}: the absolute HLS master playlist URL of a playable video with
        a fresh read token (POST /v1/tokens), for a player that sends no header. A video
        not playable yet raises the server's own answer (404 not_found: not playable yet)."""
        video = self.video(video_id)
        path = (video.get("playback") or {}).get("hls")
        if not path:
            path = f"/v1/videos/{_segment(video_id)}/hls/master.m3u8"
            self._send("GET", path)  # refused unless it became playable since: the server says why
        minted = self._send("POST", "/v1/tokens").json()
        return {"url": f"{self.url}{path}?{urlencode({'token': minted['token']})}", "expires_at": minted["expires_at"]}

    def head_rendition(self, video_id: str, rendition: str) -> httpx.Response:
        return self._send("HEAD", f"/v1/videos/{_segment(video_id)}/renditions/{_segment(rendition)}")

    def stream_rendition(self, video_id: str, rendition: str, headers: dict) -> httpx.Response:
        return self._send(
            "GET", f"/v1/videos/{_segment(video_id)}/renditions/{_segment(rendition)}", stream=True, headers=headers
        )


class _Reading:
    """A file for httpx's multipart body that reports how much has been read."""

    def __init__(self, f, on_progress):
        self._f, self._on_progress, self._sent = f, on_progress, 0

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(CHUNK if size is None or size < 0 else min(size, CHUNK))
        self._sent += len(data)
        if self._on_progress:
            self._on_progress(self._sent)
        return data

    def fileno(self) -> int:  # lets httpx size the body (Content-Length, not chunked)
        return self._f.fileno()

    def seek(self, *args) -> int:
        return self._f.seek(*args)

    def tell(self) -> int:
        return self._f.tell()


def _api_error(response: httpx.Response) -> ApiError:
    retry_after = response.headers.get("retry-after")
    retry_after = float(retry_after) if retry_after and retry_after.isdigit() else None
    try:
        body = response.json()
        return ApiError(str(body["code"]), str(body["message"]), response.status_code, retry_after)
    except (ValueError, KeyError, TypeError):
        text = response.text.strip()[:200] or response.reason_phrase
        return ApiError(f"http_{response.status_code}", text, response.status_code, retry_after)


def _segment(value: str) -> str:
    return quote(value, safe="")


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, dict, str | None]]:
    """Server-Sent Events framing -> (event, JSON data, id); comments (keep-alives) skipped."""
    name, data, event_id = "message", [], None
    for line in lines:
        if line == "":
            if data:
                text = "\n".join(data)
                try:
                    payload = json.loads(text)
                except ValueError:
                    payload = {"raw": text}
                yield name, payload, event_id
            name, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value


# --- downloads, resumable by Range --------------------------------------------------------------


def part_path(target: Path, etag: str) -> Path:
    """Where an unfinished download of this exact content (by ETag) is kept."""
    tag = hashlib.sha256(etag.encode()).hexdigest()[:12]
    return target.with_name(f"{target.name}.{tag}.part")


def download(
    client: Client,
    video_id: str,
    rendition: str,
    target: Path,
    on_start: Callable[[int, int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> dict:
    """Download a rendition to target; resume a `.part` left by an interrupted run.

    The partial file is named after the content's ETag and the request carries `If-Range`,
    so a resumed download never glues two different encodings together: if the rendition
    changed, the server answers 200 with the whole body and the download starts over.
    """
    head = client.head_rendition(video_id, rendition)
    etag = head.headers.get("etag", "")
    total = int(head.headers.get("content-length", "0"))
    part = part_path(target, etag)
    for stale in target.parent.glob(f"{target.name}.*.part"):
        if stale != part:
            stale.unlink(missing_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    if offset > total:
        part.unlink()
        offset = 0
    resumed_from = offset
    if offset < total:
        headers = {"Range": f"bytes={offset}-", "If-Range": etag} if offset and etag else {}
        with closing(client.stream_rendition(video_id, rendition, headers)) as response:
            if response.status_code == 206:
                total = int(response.headers.get("content-range", "").rpartition("/")[2] or total)
            else:  # the whole body (the content changed, or no Range was sent): start over
                offset = resumed_from = 0
                total = int(response.headers.get("content-length") or total)
                fresh = response.headers.get("etag", etag)
                if fresh != etag:
                    part.unlink(missing_ok=True)
                    part = part_path(target, fresh)
            if on_start:
                on_start(offset, total)
            with part.open("r+b" if offset else "wb") as f:
                f.seek(offset)
                f.truncate()
                try:
                    for chunk in response.iter_bytes(CHUNK):
                        f.write(chunk)
                        offset += len(chunk)
                        if on_progress:
                            on_progress(offset)
                except httpx.TransportError as exc:
                    raise ApiError(
                        "interrupted",
                        f"the download stopped at {offset} of {total} bytes ({exc}); run the same command to resume",
                    ) from None
    elif on_start:
        on_start(offset, total)
    size = part.stat().st_size if part.exists() else 0
    if size != total:
        raise ApiError("incomplete", f"got {size} of {total} bytes; run the same command to resume")
    part.replace(target)
    return {"id": video_id, "rendition": rendition, "path": str(target), "bytes": total, "resumed_from": resumed_from}


# --- the commands ------------------------------------------------------------------------------

Url = Annotated[str, typer.Option("--url", envvar="VIDMESH_URL", help="The gateway's URL.")]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="VIDMESH_API_KEY",
        help="API key (default: the dev key `vidmesh up` wrote to $VIDMESH_DATA_DIR/dev-api-key).",
        show_default=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON on stdout (for scripts).")]
VideoId = Annotated[str, typer.Argument(metavar="ID", help="Video id.")]

# The options of every command that talks to the gateway, after the command's own parameters.
GATEWAY_OPTIONS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
    for name, annotation, default in (("url", Url, DEFAULT_URL), ("api_key", ApiKey, None), ("as_json", AsJson, False))
]


def _client(url: str, api_key: str | None, as_json: bool) -> Client:
    key = api_key or _dev_key()
    if not key:
        _fail(
            ApiError("no_api_key", "no API key: pass --api-key or set VIDMESH_API_KEY"),
            as_json,
        )
    return Client(url, key)


@contextmanager
def _session(url: str, api_key: str | None, as_json: bool) -> Iterator[Client]:
    """The client of one command; a refused request prints the server's answer and exits 1."""
    with _client(url, api_key, as_json) as client:
        try:
            yield client
        except ApiError as exc:
            _fail(exc, as_json)


def _gateway_command(cli: typer.Typer, name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register `run(client, as_json, <its own parameters>)` as the command `name`, run in a
    `_session`. Typer reads a command's parameters from its signature, so the registered
    function's signature is `run`'s own parameters followed by GATEWAY_OPTIONS."""

    def register(run: Callable[..., None]) -> Callable[..., None]:
        own = list(inspect.signature(run, eval_str=True).parameters.values())[2:]

        @functools.wraps(run)
        def command(*, url: str, api_key: str | None, as_json: bool, **params: object) -> None:
            with _session(url, api_key, as_json) as client:
                run(client, as_json, **params)

        command.__signature__ = inspect.Signature(own + GATEWAY_OPTIONS)  # type: ignore[attr-defined]
        cli.command(name)(command)
        return run

    return register


def _dev_key() -> str | None:
    path = Settings.load().data_dir / "dev-api-key"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _report(exc: ApiError, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"code": exc.code, "message": exc.message}), err=True)
    else:
        status = f" (HTTP {exc.status})" if exc.status else ""
        err.print(f"[bold red]error[/]: {exc.code}: {exc.message}{status}", markup=True)


def _fail(exc: ApiError, as_json: bool, exit_code: int = EXIT_ERROR):
    _report(exc, as_json)
    raise typer.Exit(exit_code)


def _emit(obj) -> None:
    """One JSON document on one line of stdout."""
    typer.echo(json.dumps(obj, separators=(",", ":")))


def register(cli: typer.Typer) -> None:
    """Add the client commands to the `vidmesh` app."""

    @cli.command("upload")
    def upload_cmd(
        files: Annotated[
            list[Path],
            typer.Argument(
                metavar="FILE...", help="Video files to upload.", exists=True, dir_okay=False, readable=True
            ),
        ],
        wait: Annotated[bool, typer.Option("--wait", help="Follow processing live until ready or failed.")] = False,
        chunk_size: Annotated[
            str,
            typer.Option(
                "--chunk-size",
                help="Files larger than this are sent resumably (tus), one PATCH of this size at a time "
                "(64M, 512K, 1G).",
            ),
        ] = "64M",
        resume: Annotated[
            bool,
            typer.Option(
                "--resume",
                help="Continue an interrupted resumable upload of the same file (same path, size and "
                "modification time) where the gateway stopped.",
            ),
        ] = False,
        url: Url = DEFAULT_URL,
        api_key: ApiKey = None,
        as_json: AsJson = False,
    ) -> None:
        """Upload videos (with a progress bar); --wait follows each one until ready or failed.

        A refused file does not stop the others; the exit code then is 1.
        """
        try:
            chunk = tusclient.parse_size(chunk_size)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--chunk-size") from None
        refused = failed = False
        with _client(url, api_key, as_json) as client:
            uploaded: list[dict] = []
            for path in files:
                try:
                    video = _upload_one(client, path, as_json, chunk, resume)
                except ApiError as exc:
                    _report(ApiError(exc.code, f"{path.name}: {exc.message}", exc.status), as_json)
                    refused = True
                    if exc.code in ("unauthorized", "unreachable"):
                        break  # the next file would get the same answer
                    continue
                uploaded.append(video)
                if as_json and not wait:
                    _emit(video)
            for video in uploaded if wait else []:
                try:
                    final = _follow(client, video, as_json)
                except ApiError as exc:
                    _report(exc, as_json)
                    refused = True
                    continue
                failed |= final["status"] != "ready"
                if as_json:
                    _emit(final)
        if refused:
            raise typer.Exit(EXIT_ERROR)
        if failed:
            raise typer.Exit(EXIT_VIDEO_FAILED)

    @_gateway_command(cli, "ls")
    def ls_cmd(
        client: Client,
        as_json: bool,
        limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=100, help="How many videos.")] = 20,
        cursor: Annotated[str | None, typer.Option("--cursor", help="next_cursor of the previous page.")] = None,
    ) -> None:
        """List videos, newest first."""
        page = client.videos(limit, cursor)
        if as_json:
            _emit(page)
            return
        if not page["items"]:
            out.print("no videos")
            return
        table = Table(box=None, pad_edge=False)
        for col in ("ID", "STATUS", "CREATED", "SOURCE", "DURATION", "RENDITIONS", "NAME"):
            table.add_column(col, no_wrap=col != "NAME", overflow="fold")
        for v in page["items"]:
            s = v.get("source") or {}
            table.add_row(
                v["id"],
                _status_text(v),
                _when(v["created_at"]),
                f"{s['width']}x{s['height']}" if s.get("width") else "",
                f"{s['duration']:.1f} s" if s.get("duration") is not None else "",
                " ".join(r["name"] for r in v.get("renditions", [])),
                v.get("filename") or "",
            )
        out.print(table)
        if page.get("next_cursor"):
            out.print(f"more: vidmesh ls --cursor {page['next_cursor']}")

    @_gateway_command(cli, "status")
    def status_cmd(client: Client, as_json: bool, video_id: VideoId) -> None:
        """A video's status, source facts, renditions and thumbnail."""
        video = client.video(video_id)
        if as_json:
            _emit(video)
            return
        _print_video(video, client.url)

    @_gateway_command(cli, "download")
    def download_cmd(
        client: Client,
        as_json: bool,
        video_id: VideoId,
        rendition: Annotated[
            str | None, typer.Option("--rendition", "-r", help="e.g. 720p (default: the largest one).")
        ] = None,
        output: Annotated[
            Path | None, typer.Option("--output", "-o", help="File or directory (default: ./<id>-<rendition>.mp4).")
        ] = None,
    ) -> None:
        """Download a rendition with a progress bar; an interrupted download resumes (Range)."""
        video = client.video(video_id)
        names = [r["name"] for r in sorted(video.get("renditions", []), key=lambda r: -r["height"])]
        if rendition is None:
            if not names:
                raise ApiError("not_found", f"video {video_id} has no rendition yet (status {video['status']})")
            rendition = names[0]
        elif rendition not in names:
            have = ", ".join(names) or "none yet"
            raise ApiError("not_found", f"video {video_id} has no rendition {rendition!r} (it has: {have})")
        target = output or Path(f"{video_id}-{rendition}.mp4")
        if target.is_dir():
            target = target / f"{video_id}-{rendition}.mp4"
        with _bar_progress(as_json) as progress:
            task = progress.add_task(f"{rendition} {target.name}", total=None)

            def started(offset: int, total: int) -> None:
                progress.update(task, completed=offset, total=total)

            result = download(
                client,
                video_id,
                rendition,
                target,
                on_start=started,
                on_progress=lambda done: progress.update(task, completed=done),
            )
        if as_json:
            _emit(result)
        else:
            resumed = f", resumed at {result['resumed_from']} bytes" if result["resumed_from"] else ""
            out.print(f"saved {result['path']} ({_size(result['bytes'])}{resumed})")

    @_gateway_command(cli, "url")
    def url_cmd(client: Client, as_json: bool, video_id: VideoId) -> None:
        """The video's HLS master playlist URL with a fresh read token, for any player:
        `ffplay "$(vidmesh url ID)"`. It works from the first segments on (while
        processing); the token is read-only and expires after an hour (--json: expires_at)."""
        link = client.playback_url(video_id)
        if as_json:
            _emit(link)
        else:
            typer.echo(link["url"])  # one plain line, for $(...)

    @_gateway_command(cli, "rm")
    def rm_cmd(
        client: Client,
        as_json: bool,
        video_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Video ids.")],
    ) -> None:
        """Delete videos: their media and state; they then read `deleted`."""
        for video_id in video_ids:
            video = client.delete(video_id)
            if as_json:
                _emit(video)
            else:
                out.print(f"deleted {video_id}")

    @_gateway_command(cli, "events")
    def events_cmd(client: Client, as_json: bool, video_id: VideoId) -> None:
        """Tail a video's events (history, then live) until it is ready, failed or deleted."""
        try:
            for name, data, event_id in client.events(video_id):
                if as_json:
                    _emit({"event": name, "id": event_id, "data": data})
                else:
                    out.print(f"{event_id or '-':>6}  {name:<22} {_event_summary(name, data)}")
        except KeyboardInterrupt:
            raise typer.Exit(130) from None


# --- progress of one video, from its events --------------------------------------------------


# The audio and the thumbnail are tracks of their own, named after their tasks: a failed
# task (`task_failed`) names the track it leaves unfinished.
AUDIO, THUMBNAIL = AUDIO_TASK, THUMBNAIL_TASK


class VideoProgress:
    """What a user wants to see of one video while it processes, folded from its events.

    Chunk tasks encode every rendition of a part of the timeline at once, so renditions
    advance together: each one's share is the segments encoded (per chunk, the most
    `chunk_progress` reported, or the final count of `chunk_encoded`) over the segments
    `video_planned` expects. A rendition is done only when its MP4 is stitched
    (`rendition_stitched`); until then it stays below 100 %, because the plan's count is an
    estimate (the stored count can differ by one) and the stitch still has to run.

    Tracks are the renditions, then `audio` (when the source has sound) and `thumbnail`.
    Events may repeat (a replayed history) and arrive in any order: applying is idempotent.
    """

    def __init__(self) -> None:
        self.renditions: list[str] = []
        self.chunks = 0  # chunk tasks planned
        self.segments = 0  # segments planned per rendition
        self.audio = False
        self.thumbnail = False
        self.chunk_segments: dict[int, int] = {}  # chunk -> segments encoded so far
        self.chunks_encoded: set[int] = set()
        self.stitched: dict[str, dict] = {}  # rendition -> its rendition_stitched data
        self.finished: set[str] = set()  # audio / thumbnail done
        self.failures: dict[str, str] = {}  # track -> "task code"
        self.ended = False  # the video failed or was deleted: nothing more will finish

    @property
    def tracks(self) -> list[str]:
        return [*self.renditions, *([AUDIO] if self.audio else []), *([THUMBNAIL] if self.thumbnail else [])]

    def apply(self, name: str, d: dict) -> None:
        if name == "video_planned":
            self.renditions = [r["name"] for r in d.get("renditions", [])]
            self.chunks = int(d.get("chunks") or 0)
            self.segments = int(d.get("segments") or 0)
            self.audio = bool(d.get("audio"))
            self.thumbnail = bool(d.get("thumbnail", True))
        elif name == "chunk_progress":
            chunk = int(d.get("chunk", 0))
            if chunk not in self.chunks_encoded:
                self.chunk_segments[chunk] = max(self.chunk_segments.get(chunk, 0), int(d.get("segments") or 0))
        elif name == "chunk_encoded":
            chunk = int(d.get("chunk", 0))
            self.chunks_encoded.add(chunk)
            self.chunk_segments[chunk] = len(d.get("segments") or [])
        elif name == "audio_encoded":
            self.finished.add(AUDIO)
        elif name == "thumbnail_extracted":
            self.finished.add(THUMBNAIL)
        elif name == "rendition_stitched":
            rendition = str(d.get("rendition") or "?")
            self.stitched[rendition] = d
            if rendition not in self.renditions:
                self.renditions.append(rendition)
        elif name == "task_failed":
            task = str(d.get("task") or "?")
            error = d.get("error") or {}
            text = f"{task} {error.get('code')}"
            for track in self._tracks_of(task):
                self.failures[track] = text
        elif name in ("video_failed", "video_deleted"):
            self.ended = True

    def _tracks_of(self, task: str) -> list[str]:
        """The tracks a failed task leaves unfinished: a chunk or the stitch holds back every
        rendition not yet stitched."""
        if task in (AUDIO, THUMBNAIL):
            return [task]
        return [r for r in self.renditions if r not in self.stitched]

    @property
    def encoded(self) -> int:
        """Segments encoded so far (of every rendition alike)."""
        return sum(self.chunk_segments.values())

    @property
    def all_chunks_encoded(self) -> bool:
        return self.chunks > 0 and len(self.chunks_encoded) >= self.chunks

    def percent(self, track: str) -> float:
        if track in self.stitched or track in self.finished:
            return 100.0
        if track in (AUDIO, THUMBNAIL):
            return 0.0
        if self.all_chunks_encoded:
            return 99.0  # encoded; the stitch is left
        done = self.encoded
        return min(99.0, 100.0 * done / max(self.segments, done, 1))

    def state(self, track: str) -> str:
        """A few words on the track: queued, encoding, stitching, done, or why it failed."""
        if track in self.stitched:
            return f"done {_size(self.stitched[track].get('size'))}"
        if track in self.finished:
            return "done"
        if track in self.failures:
            return f"failed: {self.failures[track]}"
        if self.ended:
            return "not done"
        if track in (AUDIO, THUMBNAIL):
            return "queued"
        if self.all_chunks_encoded:
            return "stitching"
        if self.encoded or self.chunks_encoded:
            return f"encoding {self.encoded}/{max(self.segments, self.encoded)} segments"
        return "queued"


# --- upload and follow -------------------------------------------------------------------------


def _bar_progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=quiet,
        transient=False,
    )


UPLOAD_ATTEMPTS = 4


def _upload_one(
    client: Client, path: Path, as_json: bool, chunk_size: int = 64 * 1024 * 1024, resume: bool = False
) -> dict:
    """Upload one file: larger than `chunk_size`, resumably (tus, services/tusclient.py);
    else in one POST, retried when the gateway sheds load (429) or the connection drops.

    Every attempt of a POST carries the same Idempotency-Key, so a retry of an upload that
    did arrive answers with that video instead of starting a second one.
    """
    size = path.stat().st_size
    if size > chunk_size:
        return _upload_resumable(client, path, as_json, chunk_size, resume)
    key = f"cli-{uuid.uuid4()}"
    with _bar_progress(as_json) as progress:
        task = progress.add_task(f"upload {path.name}", total=size)
        for attempt in range(1, UPLOAD_ATTEMPTS + 1):
            try:
                video = client.upload(path, lambda sent: progress.update(task, completed=sent), key)
                break
            except ApiError as exc:
                again = exc.code in ("overloaded", "connection_lost", "upload_in_progress")
                if not again or attempt == UPLOAD_ATTEMPTS:
                    raise
                delay = exc.retry_after or min(2.0**attempt, 10.0)
                progress.console.print(f"{path.name}: {exc.code}, retrying in {delay:.0f} s", markup=False)
                progress.update(task, completed=0)
                time.sleep(delay)
        progress.update(task, completed=size)
    if not as_json:
        out.print(f"uploaded {path.name} -> {video['id']} ({_source_summary(video.get('source'))})")
    return video


def _upload_resumable(client: Client, path: Path, as_json: bool, chunk_size: int, resume: bool) -> dict:
    size = path.stat().st_size
    with _bar_progress(as_json) as progress:
        task = progress.add_task(f"upload {path.name}", total=size)

        def say(text: str) -> None:
            progress.console.print(text, markup=False)

        def send(method: str, target: str, **kw) -> httpx.Response:
            timeout = httpx.Timeout(300, connect=10)  # the last PATCH waits for the probe
            return client._send(method, target, timeout=timeout, **kw)

        try:
            video_id = tusclient.upload(
                send,
                client.url,
                path,
                chunk_size=chunk_size,
                resume=resume,
                on_progress=lambda done: progress.update(task, completed=done),
                say=say,
            )
        except KeyboardInterrupt:
            say(f"{path.name}: interrupted; `vidmesh upload --resume {path}` continues where it stopped")
            raise typer.Exit(130) from None
        progress.update(task, completed=size)
    video = client.video(video_id)
    if not as_json:
        out.print(f"uploaded {path.name} -> {video['id']} ({_source_summary(video.get('source'))})")
    return video


def _follow(client: Client, video: dict, as_json: bool) -> dict:
    """Show per-rendition progress (and the audio's and the thumbnail's) from the SSE
    stream; return the final video."""
    video_id = video["id"]
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[state]}"),
        console=err,
        disable=as_json,
    )
    bars: dict[str, int] = {}
    seen = VideoProgress()

    def redraw() -> None:
        for track in seen.tracks:
            if track not in bars:
                bars[track] = progress.add_task(f"{video_id[-8:]} {track:>9}", total=100, state="queued")
            state = escape(seen.state(track))
            if track in seen.failures and track not in seen.stitched and track not in seen.finished:
                state = f"[red]{state}[/]"
            progress.update(bars[track], completed=seen.percent(track), state=state)

    outcome = None
    with progress:
        for name, data, _ in client.events(video_id):
            seen.apply(name, data)
            redraw()
            if name == "task_failed" and not as_json:
                progress.console.print(
                    f"{video_id}: task {data.get('task')} failed: {_error_text(data.get('error'), data.get('task'))}",
                    markup=False,
                )
            if name in TERMINAL_EVENTS or name == "video":
                outcome = name
                break
    # The catalog projects the same events a moment later: read until it has caught up.
    expected = {"video_ready": "ready", "video_failed": "failed", "video_deleted": "deleted"}.get(outcome or "")
    deadline = time.monotonic() + 15.0
    final = client.video(video_id)
    while expected and final["status"] != expected and time.monotonic() < deadline:
        time.sleep(0.1)
        final = client.video(video_id)
    if not as_json:
        if final["status"] == "ready":
            names = " ".join(r["name"] for r in final.get("renditions", []))
            out.print(f"[green]ready[/] {video_id}: {names}", markup=True)
        else:
            detail = f": {_error_text(final['error'])}" if final.get("error") else ""
            out.print(f"[red]{final['status']}[/] {video_id}{detail}", markup=True)
    if outcome is None and final["status"] == "processing":  # the stream ended early
        raise ApiError("stream_ended", f"the event stream of {video_id} ended before a final state")
    return final


# --- formatting ----------------------------------------------------------------------------------


def _size(n: float | None) -> str:
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


def _percent(p: float) -> str:
    # rounded down: a rendition reads 100 % only once its MP4 is stitched
    return f"{math.floor(p)}%"


def _error_text(error: dict | None, task: str | None = None) -> str:
    """`code: message`. A task's message starts with its task name, and often repeats the
    code after it ("chunk:3: bad_media: ..."): the code is shown once, and the task name
    not at all when the caller already shows it."""
    error = error or {}
    code, message = str(error.get("code")), str(error.get("message") or "")
    head, sep, rest = message.partition(": ")
    if sep and rest.startswith(f"{code}: "):
        message = f"{head}: {rest[len(code) + 2 :]}"
    if task and message.startswith(f"{task}: "):
        message = message[len(task) + 2 :]
    return f"{code}: {message}"


def _status_text(v: dict) -> str:
    status = v["status"]
    if status == "processing" and v.get("progress"):
        done = sum(v["progress"].values()) / max(1, len(v.get("planned") or v["progress"]))
        return f"processing {_percent(done)}"
    if status == "failed" and v.get("error"):
        return f"failed ({v['error']['code']})"
    if status == "ready" and v.get("warnings"):
        return f"ready ({len(v['warnings'])} warning{'s' if len(v['warnings']) > 1 else ''})"
    return status


def _source_summary(s: dict | None) -> str:
    if not s:
        return ""
    parts = []
    if s.get("width") and s.get("height"):
        parts.append(f"{s['width']}x{s['height']}")
    if s.get("duration") is not None:
        parts.append(f"{s['duration']:.1f} s")
    if s.get("video_codec"):
        parts.append(s["video_codec"] + (f"/{s['audio_codec']}" if s.get("audio_codec") else ""))
    parts.append(_size(s.get("size")))
    return ", ".join(parts)


def _print_video(v: dict, base: str) -> None:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("id", v["id"])
    table.add_row("status", _status_text(v))
    if v.get("filename"):
        table.add_row("filename", v["filename"])
    table.add_row("created", _when(v.get("created_at")))
    table.add_row("updated", _when(v.get("updated_at")))
    s = v.get("source") or {}
    if s:
        table.add_row("source", _source_summary(s))
        extra = [f"{k} {s[k]}" for k in ("container", "fps", "rotation") if s.get(k)]
        if extra:
            table.add_row("", ", ".join(str(e) for e in extra))
    if v.get("error"):
        table.add_row("error", escape(_error_text(v["error"])))
    for w in v.get("warnings") or []:
        table.add_row("warning", escape(f"{w.get('code')}: {w.get('message')}"))
    if v.get("planned") and v["status"] == "processing":
        done = {r["name"] for r in v.get("renditions", [])}
        table.add_row(
            "progress",
            ", ".join(
                f"{name} {'done' if name in done else _percent(v.get('progress', {}).get(name, 0))}"
                for name in v["planned"]
            ),
        )
    for r in v.get("renditions", []):
        table.add_row(f"rendition {r['name']}", f"{r['width']}x{r['height']}, {_size(r.get('size'))}, {base}{r['url']}")
    if v.get("thumbnail"):
        t = v["thumbnail"]
        table.add_row("thumbnail", f"{t['width']}x{t['height']}, {base}{t['url']}")
    if (v.get("playback") or {}).get("hls"):
        table.add_row("hls", f"{base}{v['playback']['hls']}  (with a token: vidmesh url {v['id']})")
    out.print(table)


def _event_summary(name: str, d: dict) -> str:
    if name == "video_uploaded":
        return f"{d.get('filename') or ''} {_source_summary(d.get('source'))}".strip()
    if name == "video_planned":
        parts = [" ".join(r["name"] for r in d.get("renditions", []))]
        if d.get("chunks"):
            chunks, segments = d["chunks"], d.get("segments", 0)
            parts.append(
                f"{chunks} chunk{'s' * (chunks != 1)}, {segments} segment{'s' * (segments != 1)} of {d.get('segment_s', 0):g} s"
            )
        parts += [extra for extra in ("audio", "thumbnail") if d.get(extra)]
        return ", ".join(parts)
    if name == "chunk_progress":
        n = d.get("segments")
        return f"chunk {d.get('chunk')}: {n} segment{'s' * (n != 1)} encoded"
    if name == "chunk_encoded":
        segments = d.get("segments") or []
        size = sum(sum((s.get("sizes") or {}).values()) for s in segments)
        span = f"segments {segments[0]['index']}-{segments[-1]['index']}" if segments else "no segment (past the end)"
        return f"chunk {d.get('chunk')}: {span}, every rendition, {_size(size)}"
    if name == "audio_encoded":
        n = len(d.get("segments") or [])
        return f"{n} segment{'s' * (n != 1)}, {d.get('codec')}"
    if name == "rendition_stitched":
        return f"{d.get('rendition')} {d.get('width')}x{d.get('height')} {_size(d.get('size'))}, {d.get('duration', 0):.1f} s"
    if name == "thumbnail_extracted":
        return f"{d.get('width')}x{d.get('height')}"
    if name == "task_failed":
        return f"{d.get('task')}: {_error_text(d.get('error'), d.get('task'))}"
    if name == "video_failed":
        return _error_text(d.get("error"))
    if name == "video":
        return _status_text(d)
    return ""
