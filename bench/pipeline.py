"""pipeline: a 10 s 1080p30 H.264+AAC clip through the whole mesh until `ready`, versus
Debian's ffmpeg CLI making the same outputs in one command.

Mesh: POST /v1/videos (streamed into the object store, probed) -> 202, then the chunked
fan-out: one EncodeChunk task per chunk of the timeline (each decodes its chunk once and
encodes all four rungs into CMAF fragments), one EncodeAudio task, one thumbnail task; when
every chunk and the audio are in, one StitchRenditions task remuxes each rung and the audio
into a faststart MP4 -> ready. The bench listens to the events on the bus (a core NATS
subscription: no polling load), so it can split the time: upload+probe, fan-out, each
chunk, the audio, each stitched rendition, the thumbnail, ready.

CLI: one `ffmpeg` process, decode once, `split` to five bilinear scalers, four libx264
encoders with each rung's own options taken from the product (services.transcoder.chunk
.x264_options on the ladder: preset, capped CRF, VBV, profile, level, no scene cuts, an IDR
forced at every segment boundary), AAC 128k encoded once and written by the `tee` muxer
into the four faststart MP4s, and a first-frame JPEG of at most 640 px wide. Runs
alternate mesh, CLI, mesh, CLI.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from rich.table import Table

from .cli_ffmpeg import ensure_ffmpeg
from .common import (
    OtherWork,
    clip,
    console,
    cpu_seconds,
    figures_table,
    loadavg,
    median,
    mesh_processes,
    running_mesh,
    verdict,
    wait_for_quiet,
)

NAME = "pipeline"
WIDTH, HEIGHT, SECONDS, FPS = 1920, 1080, 10.0, 30
RUNS = max(1, int(os.environ.get("BENCH_PIPELINE_RUNS", 2)))
TARGET_WALL = 0.85  # mesh / CLI wall time, at most
TARGET_CPU = 1.0  # mesh / CLI CPU seconds, at most
READY_TIMEOUT_S = 600
THUMB_MAX_WIDTH = 640  # ExtractThumbnail's default
AUDIO_KBPS = 128  # EncodeAudio's default
TENANT = "alice"


# --- the mesh ----------------------------------------------------------------------------------


def event_label(e) -> str | None:
    """A short name for an event of the video, or None for one the bench does not time."""
    return {
        "VideoUploaded": lambda: "uploaded",
        "VideoPlanned": lambda: "planned",
        "VideoPlayable": lambda: "playable",  # HLS plays from the start: chunk 0 and the audio's first segment stored
        "ChunkEncoded": lambda: f"chunk {e.chunk}",
        "AudioEncoded": lambda: "audio",
        "RenditionStitched": lambda: f"stitched {e.rendition}",
        "ThumbnailExtracted": lambda: "thumbnail",
        "VideoReady": lambda: "ready",
        "VideoFailed": lambda: "FAILED",
        "TaskFailed": lambda: f"task failed {e.task}",
    }.get(type(e).__name__, lambda: None)()


async def mesh_once(mesh, clip_bytes: bytes, *, renditions: int = 4) -> dict:
    """Upload one clip and wait for `ready` (or `failed`) on the bus. Times every event of the
    video from the POST, and the CPU seconds every mesh process spent meanwhile."""
    import nats

    quiet = wait_for_quiet("mesh run")

    from shared.contracts import Event, decoder

    events: list[tuple[float, object, dict]] = []
    dec = decoder(Event)
    nc = await nats.connect(mesh.nats_url, name="bench-pipeline")
    ready = asyncio.Event()
    box: dict = {}
    procs = mesh_processes(mesh)
    procs["vidmesh up"] = mesh.proc.pid
    workers = {name: pid for name, pid in procs.items() if name.startswith("transcoder")}

    async def on_msg(msg):
        now = time.perf_counter()
        # The transcoders' CPU clocks at each event: with one transcoder, the difference
        # between two completions is the CPU cost of the task in between, whatever the load.
        clocks = {name: cpu_seconds(pid) for name, pid in workers.items()}
        try:
            event = dec.decode(msg.data)
        except Exception:
            return
        events.append((now, event, clocks))
        if type(event).__name__ in ("VideoReady", "VideoFailed") and event.video_id == box.get("id"):
            ready.set()

    sub = await nc.subscribe(f"*.evt.*.{TENANT}.*", cb=on_msg)
    await nc.flush()
    cpu0 = {name: cpu_seconds(pid) for name, pid in procs.items()}
    load0 = loadavg()
    headers = {"Authorization": f"Bearer {mesh.KEYS[TENANT]}", "Content-Type": "video/mp4", "X-Filename": "bench.mp4"}
    async with httpx.AsyncClient(base_url=mesh.url, headers=headers, timeout=READY_TIMEOUT_S) as client:
        with OtherWork() as other:
            started = time.perf_counter()
            resp = await client.post("/v1/videos", content=clip_bytes)
            accepted = time.perf_counter()
            resp.raise_for_status()
            video_id = box["id"] = resp.json()["id"]
            if any(
                getattr(e, "video_id", None) == video_id and type(e).__name__ in ("VideoReady", "VideoFailed")
                for _, e, _ in events
            ):
                ready.set()
            await asyncio.wait_for(ready.wait(), READY_TIMEOUT_S)
            done = time.perf_counter()
            cpu1 = {name: cpu_seconds(pid) for name, pid in procs.items()}
        # The catalog projects the ready event a moment after it is on the bus: poll the
        # public API (bounded) until it shows it, as a polling client would see it.
        deadline = time.perf_counter() + 30
        while True:
            video = (await client.get(f"/v1/videos/{video_id}")).json()
            if video.get("status") != "processing" or time.perf_counter() > deadline:
                break
            await asyncio.sleep(0.02)
        confirmed = time.perf_counter()
    await sub.unsubscribe()
    await nc.close()

    timeline = []  # (seconds after the POST, label), in order
    worker_cpu = []  # (label, {transcoder: CPU seconds since the POST}) at each of those events
    planned = None
    for t, e, clocks in events:
        if getattr(e, "video_id", None) != video_id:
            continue
        label = event_label(e)
        if label:
            timeline.append([round(t - started, 3), label])
            worker_cpu.append(
                [
                    label,
                    {
                        name: round(c - cpu0[name], 3)
                        for name, c in clocks.items()
                        if c is not None and cpu0.get(name) is not None
                    },
                ]
            )
        if type(e).__name__ == "VideoPlanned":
            planned = {"chunks": e.chunks, "segments": e.segments, "segment_s": e.segment_s, "audio": e.audio}
    names = sorted(r["name"] for r in video.get("renditions", []))
    ok = video.get("status") == "ready" and len(names) == renditions and video.get("thumbnail") is not None
    cpu_by = {
        name: round(cpu1[name] - cpu0[name], 2)
        for name in procs
        if cpu0.get(name) is not None and cpu1.get(name) is not None
    }
    return {
        "video_id": video_id,
        "ok": ok,
        "status": video.get("status"),
        "error": video.get("error"),
        "renditions": names,
        "thumbnail": video.get("thumbnail"),
        "plan": planned,
        "seconds": round(done - started, 3),  # POST sent -> VideoReady on the bus
        "seconds_upload_probe": round(accepted - started, 3),  # POST -> 202 (stored + probed)
        "seconds_after_202_to_ready": round(done - accepted, 3),
        "seconds_to_get_ready": round(confirmed - started, 3),  # ... and the GET that shows it
        "cpu_seconds": round(sum(cpu_by.values()), 2),  # every mesh process, nats-server and `vidmesh up` included
        "cpu_seconds_by_process": cpu_by,
        **other.result(sum(cpu_by.values())),  # the rest of the machine meanwhile
        **quiet,
        "timeline": timeline,
        "transcoder_cpu_at": worker_cpu,
        "loadavg": [load0, loadavg()],
    }


def warm_up(mesh, tmp: str) -> float:
    """One tiny clip to ready, so the first timed run meets consumers and caches as warm as
    the second (the services have imported everything by the time they say ready)."""
    from tests.clips import make_clip
    from tests.conftest import wait_for

    small = Path(make_clip(os.path.join(tmp, "warm.mp4"), width=320, height=240, seconds=1.0)).read_bytes()
    started = time.perf_counter()
    with mesh.client(TENANT) as client:
        resp = client.post("/v1/videos", content=small, headers={"Content-Type": "video/mp4"})
        resp.raise_for_status()
        video_id = resp.json()["id"]
        status = wait_for(
            lambda: (s := client.get(f"/v1/videos/{video_id}").json()["status"]) != "processing" and s,
            120,
            0.1,
            "warm-up",
        )
        video = client.get(f"/v1/videos/{video_id}").json()
    if status != "ready":
        errors = [line for line in list(mesh.lines) if "ERROR" in line or "WARNING" in line or "Traceback" in line]
        raise RuntimeError(
            f"the warm-up clip ended {status}, not ready: the mesh is not healthy; error "
            f"{video.get('error')}; mesh warnings:\n" + "\n".join(errors[-20:])
        )
    return time.perf_counter() - started


def timeline_text(timeline: list) -> str:
    return ", ".join(f"{label} {t:.2f}" for t, label in timeline)


# --- the CLI baseline --------------------------------------------------------------------------


# ffmpeg's names of the colour codes the transcoder tags rungs with (H.273 numbers)
_PRIMARIES = {1: "bt709", 5: "bt470bg", 6: "smpte170m", 9: "bt2020"}
_TRANSFER = {1: "bt709", 6: "smpte170m"}
_MATRIX = {1: "bt709", 5: "bt470bg", 6: "smpte170m", 9: "bt2020nc"}


def rung_colours(src: str, ladder) -> list[tuple]:
    """(colour tags, matrix conversion or None) of each rung, as the transcoder decides them
    for this source (media.colour): the CLI tags its outputs the same way."""
    import av

    from media.colour import reformat_colorspaces, rung_colour, source_colour

    with av.open(src) as container:
        frames = source_colour(container.streams.video[0])
    result = []
    for spec in ladder:
        out = rung_colour(frames, spec.width, spec.height)
        convert = reformat_colorspaces(frames, out) != (None, None)
        result.append((out, (_MATRIX[frames.matrix], _MATRIX[out.matrix]) if convert else None))
    return result


def cli_command(
    ffmpeg: str,
    src: str,
    out: str,
    ladder,
    *,
    width: int,
    height: int,
    preset: str,
    segment_s: float,
    colours: list[tuple],
) -> list[str]:
    """One ffmpeg command making what the mesh makes: the ladder's MP4s (video + AAC,
    faststart) and the first-frame JPEG. x264 options are the transcoder's own, per rung,
    and so are the colour tags (and a matrix conversion where the transcoder makes one)."""
    from services.transcoder.chunk import x264_options

    n = len(ladder)
    graph = [f"[0:v]split={n + 1}" + "".join(f"[s{i}]" for i in range(n + 1))]
    for i, spec in enumerate(ladder):
        convert = colours[i][1]
        matrix = f":in_color_matrix={convert[0]}:out_color_matrix={convert[1]}" if convert else ""
        graph.append(f"[s{i}]scale={spec.width}:{spec.height}:flags=bilinear{matrix}[v{i}]")
    tw = min(THUMB_MAX_WIDTH, width) // 2 * 2
    th = max(2, round(height * tw / width / 2) * 2)
    graph.append(f"[s{n}]scale={tw}:{th}:flags=bilinear[vt]")
    cmd = [
        ffmpeg,
        "-nostdin",
        "-y",
        "-hide_banner",
        "-loglevel",
        "error",
        "-i",
        src,
        "-filter_complex",
        ";".join(graph),
    ]
    for i in range(n):
        cmd += ["-map", f"[v{i}]"]
    cmd += ["-map", "0:a:0"]
    # An IDR at the first frame at or after every segment boundary and no other keyframe:
    # what the chunk tasks do (x264_options turns scene cuts and the keyframe interval off).
    cmd += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-force_key_frames", f"expr:gte(t,n_forced*{segment_s:g})"]
    for i, spec in enumerate(ladder):
        for key, value in x264_options(spec, preset).items():
            cmd += [f"-{key}:v:{i}", value]
        tags = colours[i][0]
        cmd += [
            f"-color_primaries:v:{i}",
            _PRIMARIES[tags.primaries],
            f"-color_trc:v:{i}",
            _TRANSFER[tags.transfer],
            f"-colorspace:v:{i}",
            _MATRIX[tags.matrix],
            f"-color_range:v:{i}",
            "tv",
        ]
    # AAC encoded once; the tee muxer writes the same packets into every rung's MP4.
    cmd += ["-c:a", "aac", "-b:a", f"{AUDIO_KBPS}k", "-ar", "48000", "-ac", "2"]
    slaves = [
        f"[f=mp4:movflags=+faststart:select=\\'{i},{n}\\']{os.path.join(out, spec.name + '.mp4')}"
        for i, spec in enumerate(ladder)
    ]
    cmd += ["-f", "tee", "|".join(slaves)]
    cmd += ["-map", "[vt]", "-frames:v", "1", "-q:v", "3", "-update", "1", os.path.join(out, "thumbnail.jpg")]
    return cmd


def cli_once(cmd_for, src: str, n_outputs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="vidmesh-bench-cli-") as out:
        cmd = cmd_for(src, out)
        quiet = wait_for_quiet("CLI run")
        load0 = loadavg()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with OtherWork() as other:
            started = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=READY_TIMEOUT_S)
            wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        outputs = {p.name: p.stat().st_size for p in Path(out).iterdir()}
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg exited {done.returncode}: {done.stderr[-2000:]}")
    return {
        "seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 2),
        **other.result(cpu),
        **quiet,
        "outputs": outputs,
        "ok": len(outputs) == n_outputs,
        "loadavg": [load0, loadavg()],
    }


def ffmpeg_version(ffmpeg: str) -> str:
    try:
        return subprocess.run([ffmpeg, "-version"], capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "unknown"


# --- the run -----------------------------------------------------------------------------------


def run() -> dict:
    from services.pipeline.ladder import plan_ladder
    from services.pipeline.settings import PipelineSettings
    from services.transcoder.settings import TranscoderSettings

    settings = PipelineSettings.load()
    preset = TranscoderSettings.load().transcode_preset
    ffmpeg = ensure_ffmpeg(console.print)
    if ffmpeg is None:
        console.print(
            "[bold red]" + "!" * 80 + "\nNO ffmpeg CLI: the pipeline benchmark reports the MESH FIGURE ALONE "
            "(no baseline, no ratio)\n" + "!" * 80 + "[/]"
        )
    ladder = plan_ladder(WIDTH, HEIGHT)
    src = clip(SECONDS, WIDTH, HEIGHT, FPS)
    clip_bytes = Path(src).read_bytes()

    colours = rung_colours(src, ladder)

    def cmd_for(source: str, out: str, exe: str | None = ffmpeg) -> list[str]:
        return cli_command(
            exe,
            source,
            out,
            ladder,
            width=WIDTH,
            height=HEIGHT,
            preset=preset,
            segment_s=settings.segment_s,
            colours=colours,
        )

    mesh_runs, cli_runs = [], []
    with tempfile.TemporaryDirectory(prefix="vidmesh-bench-pipeline-") as tmp:
        with running_mesh(label="mesh for pipeline") as mesh:
            with console.status("warm-up: one small clip through the mesh (not timed)"):
                warm = warm_up(mesh, tmp)
            console.log(f"warm-up clip ready in {warm:.1f}s")
            for n in range(RUNS):
                with console.status(f"run {n + 1}/{RUNS}: mesh"):
                    row = asyncio.run(mesh_once(mesh, clip_bytes))
                mesh_runs.append(row)
                console.log(
                    f"run {n + 1} mesh: {row['seconds']} s to ready (upload+probe {row['seconds_upload_probe']} s), "
                    f"cpu {row['cpu_seconds']} s, {row['status']} {row['renditions']}, load {row['loadavg'][0]}, "
                    f"other work {row['other_share']:.0%} of the machine; "
                    f"{timeline_text(row['timeline'])}"
                )
                if ffmpeg:
                    with console.status(f"run {n + 1}/{RUNS}: ffmpeg CLI"):
                        row = cli_once(cmd_for, src, len(ladder) + 1)
                    cli_runs.append(row)
                    console.log(
                        f"run {n + 1} CLI:  {row['seconds']} s, cpu {row['cpu_seconds']} s, "
                        f"load {row['loadavg'][0]}, other work {row['other_share']:.0%} of the machine, "
                        f"outputs {row['outputs']}"
                    )
    mesh_t = [r["seconds"] for r in mesh_runs]
    summary = {
        "mesh_best_s": min(mesh_t),
        "mesh_median_s": round(median(mesh_t), 3),
        "mesh_upload_probe_median_s": round(median([r["seconds_upload_probe"] for r in mesh_runs]), 3),
        "mesh_after_202_median_s": round(median([r["seconds_after_202_to_ready"] for r in mesh_runs]), 3),
        "mesh_cpu_median_s": round(median([r["cpu_seconds"] for r in mesh_runs]), 2),
        "mesh_all_ok": all(r["ok"] for r in mesh_runs),
        "mesh_other_share_median": round(median([r["other_share"] for r in mesh_runs]), 3),
        "baseline": ffmpeg is not None,
        "target_wall": TARGET_WALL,
        "target_cpu": TARGET_CPU,
        "chunk_s": settings.chunk_s,
        "segment_s": settings.segment_s,
    }
    if cli_runs:
        cli_t = [r["seconds"] for r in cli_runs]
        cli_cpu = median([r["cpu_seconds"] for r in cli_runs])
        summary.update(
            cli_best_s=min(cli_t),
            cli_median_s=round(median(cli_t), 3),
            cli_cpu_median_s=round(cli_cpu, 2),
            cli_other_share_median=round(median([r["other_share"] for r in cli_runs]), 3),
            ratio_best=round(min(mesh_t) / min(cli_t), 3),
            ratio_median=round(median(mesh_t) / median(cli_t), 3),
            ratio_cpu_median=round(summary["mesh_cpu_median_s"] / cli_cpu, 3),
            # each mesh run against the CLI run right after it (the closest in load)
            ratio_pairs=[round(m["seconds"] / c["seconds"], 3) for m, c in zip(mesh_runs, cli_runs)],
        )
        # A mesh run that did not end ready with the whole ladder has no meaningful time.
        summary["met_wall"] = summary["mesh_all_ok"] and summary["ratio_median"] <= TARGET_WALL
        summary["met_cpu"] = summary["mesh_all_ok"] and summary["ratio_cpu_median"] <= TARGET_CPU
        summary["met"] = summary["met_wall"] and summary["met_cpu"]
    return {
        "clip": {
            "width": WIDTH,
            "height": HEIGHT,
            "seconds": SECONDS,
            "fps": FPS,
            "bytes": len(clip_bytes),
            "source_gop_frames": int(os.environ.get("BENCH_SOURCE_GOP_FRAMES") or FPS),
        },
        "ladder": [f"{s.name} {s.width}x{s.height}" for s in ladder],
        "ffmpeg": ffmpeg_version(ffmpeg) if ffmpeg else None,
        "cli_command": shlex.join(cmd_for("source.mp4", "out", "ffmpeg")) if ffmpeg else None,
        "mesh_runs": mesh_runs,
        "cli_runs": cli_runs,
        "summary": summary,
    }


def table(result: dict) -> Table:
    s = result["summary"]
    t = figures_table(
        f"pipeline: 10 s 1080p30 clip -> 1080/720/480/360 ladder + thumbnail "
        f"({len(result['mesh_runs'])} runs each, chunks of {s['chunk_s']:g} s)",
        ("path", "best", "median", "CPU s (median)", "other work", "split (median)"),
    )
    t.add_row(
        "mesh (upload -> ready)",
        f"{s['mesh_best_s']:.2f} s",
        f"{s['mesh_median_s']:.2f} s",
        f"{s['mesh_cpu_median_s']:.1f}",
        f"{s['mesh_other_share_median']:.0%}",
        f"upload+probe {s['mesh_upload_probe_median_s']:.2f} s, then {s['mesh_after_202_median_s']:.2f} s to ready",
    )
    if s["baseline"]:
        t.add_row(
            "ffmpeg CLI (one command)",
            f"{s['cli_best_s']:.2f} s",
            f"{s['cli_median_s']:.2f} s",
            f"{s['cli_cpu_median_s']:.1f}",
            f"{s['cli_other_share_median']:.0%}",
            "",
        )
        t.add_row(
            "mesh / CLI",
            f"{s['ratio_best']:.2f}x",
            f"{s['ratio_median']:.2f}x",
            f"{s['ratio_cpu_median']:.2f}x",
            "",
            f"wall <= {TARGET_WALL}x: {verdict(s['met_wall'])}; CPU <= {TARGET_CPU}x: {verdict(s['met_cpu'])}",
        )
    else:
        t.add_row(
            "[bold red]ffmpeg CLI[/]", "[bold red]MISSING[/]", "", "", "", "[bold red]no baseline: mesh figure alone[/]"
        )
    last = result["mesh_runs"][-1]
    t.caption = (
        f"last mesh run, seconds after POST: {timeline_text(last['timeline'])}; load average {last['loadavg'][0]}"
    )
    return t
