"""load: sustained load. N small clips (2 s, 640x360 -> one chunk task making the 360p
rung, one audio task, one stitch task and one thumbnail task each) uploaded from 8 concurrent clients; videos/minute end to end, p50/p99
time to `ready`, outputs/s (renditions and thumbnails, as the Celery peer counts them), 429s. Then the same N on a fresh mesh while
one transcoder process is SIGKILLed every 3 s: the share of videos that still reach
`ready` (target: all of them).

Clients behave as real ones do: every upload has its own Idempotency-Key, and a 429
(or 503, 409 upload_in_progress, a dropped connection) is retried with the same key after
`Retry-After`. One poller thread GETs every video not yet terminal every 0.2 s; a video's
time to ready runs from its first POST byte to the first GET that shows `ready`.

With `--peer celery` (env BENCH_LOAD_PEER=celery) the same N clips and clients then go
through the task-queue design of the pipeline, Celery 5 + Redis on a shared disk
(bench/peer_celery.py), in 3 rounds that alternate with the mesh's steady runs (each row is
its median round): a row per probe placement and the ratio of videos/minute, vidmesh over
celery.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from rich.table import Table

from .common import console, figures_table, percentile, rate_figures, running_mesh, verdict

NAME = "load"
WIDTH, HEIGHT, SECONDS, FPS = 640, 360, 2.0, 30
DEFAULT_N = 40
CLIENTS = 8
POLL_S = 0.2
KILL_EVERY_S = 3.0
RUN_TIMEOUT_S = 240  # per run: the bench always stops by itself (two runs, well under 10 min)
TENANT = "alice"
MESH_ENV = {
    "VIDMESH_TRANSCODER_PROCS": "2",
    "VIDMESH_TASK_ACK_WAIT_S": "5",  # a killed transcoder's task comes back after 5 s
    "VIDMESH_MAX_BACKLOG": "200",  # below the default 500; 429s are honoured and counted
}
CHAOS_MAX_DELIVER = 10  # used only if the default (5) loses videos to retries_exhausted
PEERS = ("celery",)  # other systems `--peer` runs the same load against


def n_videos() -> int:
    return max(1, int(os.environ.get("BENCH_LOAD_N", DEFAULT_N)))


def rounds() -> int:
    """Steady runs per system: 3 with a peer (BENCH_LOAD_ROUNDS), else 1."""
    return max(1, int(os.environ.get("BENCH_LOAD_ROUNDS") or (3 if peer() else 1)))


def median_round(runs: list[dict]) -> dict:
    """The run of median videos/min, with every round's figures beside it."""
    ranked = sorted(runs, key=lambda r: r["videos_per_min"])
    row = dict(ranked[(len(ranked) - 1) // 2])
    row["rounds"] = [{k: r[k] for k in ("videos_per_min", "ttr_p50_s", "ttr_p99_s", "wall_s")} for r in runs]
    return row


def peer() -> str | None:
    name = os.environ.get("BENCH_LOAD_PEER") or None
    if name is not None and name not in PEERS:
        raise ValueError(f"BENCH_LOAD_PEER={name}: choose from {', '.join(PEERS)}")
    return name


# --- clients -----------------------------------------------------------------------------------


class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.by_status: dict[str, int] = {}

    def add(self, what: str) -> None:
        with self.lock:
            self.by_status[what] = self.by_status.get(what, 0) + 1


def upload_one(
    mesh, clip: bytes, index: int, deadline: float, counters: Counters, local: threading.local, clients: list
) -> dict:
    """POST one copy until it is accepted (202) or refused for good; retries keep the key."""
    client = getattr(local, "client", None)
    if client is None:
        client = local.client = mesh.client(TENANT)
        clients.append(client)  # closed by run_load at the end
    key = f"bench-load-{uuid.uuid4().hex}"
    headers = {"Content-Type": "video/mp4", "Idempotency-Key": key, "X-Filename": f"load-{index}.mp4"}
    row: dict = {"index": index, "key": key, "attempts": 0}
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        row["attempts"] += 1
        try:
            resp = client.post("/v1/videos", content=clip, headers=headers)
        except httpx.HTTPError as exc:
            counters.add(f"error {type(exc).__name__}")
            time.sleep(1)
            continue
        if resp.status_code == 202:
            row.update(
                id=resp.json()["id"],
                started=started,
                accepted=time.perf_counter(),
                replayed=resp.headers.get("Idempotent-Replayed") == "true",
            )
            return row
        counters.add(str(resp.status_code))
        if resp.status_code in (429, 503, 409):  # back-pressure: wait as told, same key
            time.sleep(float(resp.headers.get("Retry-After", "1")))
            continue
        row.update(refused=resp.status_code, body=resp.text[:300])
        return row
    row["refused"] = "timeout"
    return row


def run_load(mesh, clip: bytes, n: int, label: str, chaos: bool) -> dict:
    counters = Counters()
    local = threading.local()
    clients: list[httpx.Client] = []  # one per pool thread
    deadline = time.perf_counter() + RUN_TIMEOUT_S
    rows: dict[int, dict] = {}
    final: dict[str, dict] = {}
    done_at: dict[str, float] = {}
    kills: list[dict] = []
    stop_killing = threading.Event()

    def killer():
        import signal

        from tests.conftest import alive, service_pids

        rng = random.Random(4)
        while not stop_killing.wait(KILL_EVERY_S):
            live = [
                (name, pid) for name, pid in service_pids(mesh).items() if name.startswith("transcoder-") and alive(pid)
            ]
            if not live:
                kills.append({"t": round(time.perf_counter() - t0, 2), "skipped": "no transcoder alive"})
                continue
            name, pid = rng.choice(sorted(live))
            try:
                os.kill(pid, signal.SIGKILL)
                kills.append({"t": round(time.perf_counter() - t0, 2), "name": name, "pid": pid})
            except ProcessLookupError:
                pass

    t0 = time.perf_counter()
    kill_thread = threading.Thread(target=killer, daemon=True) if chaos else None
    if kill_thread:
        kill_thread.start()
    pool = ThreadPoolExecutor(CLIENTS, thread_name_prefix="bench-load-client")
    futures = [pool.submit(upload_one, mesh, clip, i, deadline, counters, local, clients) for i in range(n)]
    with mesh.client(TENANT) as poller, console.status(f"{label}: {n} uploads, {CLIENTS} clients") as status:
        while time.perf_counter() < deadline:
            for i, f in enumerate(futures):
                if i not in rows and f.done():
                    rows[i] = f.result()
            pending = [r["id"] for r in rows.values() if "id" in r and r["id"] not in final]
            for vid in pending:
                try:
                    resp = poller.get(f"/v1/videos/{vid}")
                except httpx.HTTPError:
                    continue
                if resp.status_code == 200 and resp.json().get("status") in ("ready", "failed"):
                    final[vid] = resp.json()
                    done_at[vid] = time.perf_counter()
            status.update(
                f"{label}: {len(rows)}/{n} accepted or refused, {len(final)} terminal"
                + (f", {len([k for k in kills if 'pid' in k])} kills" if chaos else "")
            )
            if len(rows) == n and len(final) == sum("id" in r for r in rows.values()):
                break
            time.sleep(POLL_S)
        stop_killing.set()
        timed_out = not (len(rows) == n and len(final) == sum("id" in r for r in rows.values()))
    pool.shutdown(wait=False, cancel_futures=True)
    if kill_thread:
        kill_thread.join()
    for c in clients:
        c.close()

    accepted = [r for r in rows.values() if "id" in r]
    ids = [r["id"] for r in accepted]
    ready = [r for r in accepted if final.get(r["id"], {}).get("status") == "ready"]
    failed = [r for r in accepted if final.get(r["id"], {}).get("status") == "failed"]
    failure_codes: dict[str, int] = {}
    for r in failed:
        code = (final[r["id"]].get("error") or {}).get("code", "?")
        failure_codes[code] = failure_codes.get(code, 0) + 1
    complete = [
        r
        for r in ready
        if len(final[r["id"]].get("renditions") or []) == 1 and final[r["id"]].get("thumbnail") is not None
    ]
    ttr = [done_at[r["id"]] - r["started"] for r in ready]
    upload_s = [r["accepted"] - r["started"] for r in accepted]
    first = min((r["started"] for r in accepted), default=t0)
    last = max((done_at[r["id"]] for r in ready), default=time.perf_counter())
    wall = max(1e-9, last - first)
    tasks = sum(
        len(final[r["id"]].get("renditions") or []) + (final[r["id"]].get("thumbnail") is not None) for r in ready
    )
    queues = queue_counters(mesh)
    result = {
        "label": label,
        "chaos": chaos,
        "n": n,
        "accepted": len(accepted),
        "refused": [{k: r.get(k) for k in ("index", "refused", "body")} for r in rows.values() if "id" not in r],
        "ready": len(ready),
        "ready_complete": len(complete),  # ready with the 360p rendition and the thumbnail
        "failed": len(failed),
        "failure_codes": failure_codes,
        "not_terminal": [v for v in ids if v not in final],
        "timed_out": timed_out,
        "ready_share": round(len(ready) / len(accepted), 4) if accepted else 0.0,
        "wall_s": round(wall, 2),  # first POST -> last ready seen
        **rate_figures(len(ready), wall, tasks, ttr),
        "upload_p50_s": round(percentile(upload_s, 50), 3) if upload_s else None,
        "upload_p99_s": round(percentile(upload_s, 99), 3) if upload_s else None,
        "responses_not_202": counters.by_status,
        "http_429": counters.by_status.get("429", 0),
        "upload_attempts": sum(r["attempts"] for r in rows.values()),
        "kills": [k for k in kills if "pid" in k],
        "kills_skipped": sum("skipped" in k for k in kills),
        "queues": queues,
        "max_deliver": int(mesh.env.get("VIDMESH_TASK_MAX_DELIVER", "5")),
    }
    return result


def queue_counters(mesh) -> dict:
    """Tasks queued and delivered by the two task queues (JetStream stream and consumer info):
    deliveries beyond the tasks queued are redeliveries (a killed worker's task, a nak)."""
    from tests.conftest import TASK_QUEUES, js_run, nats_servers

    async def query(js):
        out = {}
        for stream, durable in TASK_QUEUES.items():
            c = await js.consumer_info(stream, durable)
            published = (await js.stream_info(stream)).state.last_seq  # tasks ever queued (warm-up included)
            out[stream] = {
                "published": published,
                "delivered": c.delivered.consumer_seq,
                "extra_deliveries": c.delivered.consumer_seq - published,  # redeliveries, e.g. after a kill
                "pending": c.num_pending,
                "ack_pending": c.num_ack_pending,
            }
        return out

    try:
        return js_run(nats_servers(mesh), query, timeout=15)
    except Exception as exc:  # a figure for reading, not the result: never fail the run on it
        return {"error": f"{type(exc).__name__}: {exc}"}


def one_run(clip: bytes, n: int, label: str, chaos: bool, extra_env: dict | None = None) -> dict:
    from .pipeline import warm_up

    env = {**MESH_ENV, **(extra_env or {})}
    with running_mesh(env, label=f"mesh for {label}") as mesh, tempfile.TemporaryDirectory() as tmp:
        with console.status(f"{label}: warm-up clip (not timed)"):
            warm = warm_up(mesh, tmp)
        console.log(f"{label}: warm-up clip ready in {warm:.1f}s")
        row = run_load(mesh, clip, n, label, chaos)
    row["env"] = env
    console.log(
        f"{label}: {row['ready']}/{row['accepted']} ready ({row['failed']} failed {row['failure_codes']}), "
        f"{row['videos_per_min']} videos/min, ttr p50 {row['ttr_p50_s']} s p99 {row['ttr_p99_s']} s, "
        f"{row['tasks_per_s']} tasks/s, 429s {row['http_429']}, kills {len(row['kills'])}, "
        f"queues {row['queues']}, wall {row['wall_s']} s" + (" [bold red]TIMED OUT[/]" if row["timed_out"] else "")
    )
    return row


def load_clip() -> bytes:
    """The bytes of the load clip: WIDTH x HEIGHT, SECONDS at FPS, H.264+AAC with the
    encoder's own GOP (one keyframe in so short a clip: one chunk)."""
    from tests.clips import make_clip

    with tempfile.TemporaryDirectory(prefix="vidmesh-bench-clip-") as tmp:
        src = make_clip(os.path.join(tmp, "load.mp4"), width=WIDTH, height=HEIGHT, seconds=SECONDS, fps=FPS, audio=True)
        return Path(src).read_bytes()


def run() -> dict:
    n = n_videos()
    clip = load_clip()
    console.log(
        f"clip: {WIDTH}x{HEIGHT} {SECONDS:g} s {FPS} fps H.264+AAC, {len(clip) / 1e3:.0f} kB; N={n}, {CLIENTS} clients"
    )
    # Rounds alternate the systems (mesh, peer, mesh, peer, ...) so neither always runs first
    # on a machine that has just been idle or busy; each row is its median round.
    steady_rounds, peer_rounds = [], []
    with contextlib.ExitStack() as stack:
        run_peer = None
        if peer() == "celery":
            from . import peer_celery

            run_peer = stack.enter_context(peer_celery.session())
        for _ in range(rounds()):
            steady_rounds.append(one_run(clip, n, "steady", chaos=False))
            if run_peer:
                peer_rounds.append(run_peer(clip, n, clients=CLIENTS, poll_s=POLL_S, timeout_s=RUN_TIMEOUT_S))
    steady = median_round(steady_rounds)
    peers = [median_round([r[i] for r in peer_rounds]) for i in range(len(peer_rounds[0]))] if peer_rounds else []
    chaos_runs = [one_run(clip, n, "chaos", chaos=True)]
    if chaos_runs[0]["failure_codes"].get("retries_exhausted"):
        console.print(
            f"[bold yellow]chaos: {chaos_runs[0]['failure_codes']['retries_exhausted']} video(s) failed "
            f"retries_exhausted with VIDMESH_TASK_MAX_DELIVER=5 (a task killed 5 times); running the chaos run "
            f"again with VIDMESH_TASK_MAX_DELIVER={CHAOS_MAX_DELIVER}[/]"
        )
        chaos_runs.append(
            one_run(clip, n, "chaos", chaos=True, extra_env={"VIDMESH_TASK_MAX_DELIVER": str(CHAOS_MAX_DELIVER)})
        )
    chaos = chaos_runs[-1]
    summary = {
        "n": n,
        "steady_videos_per_min": steady["videos_per_min"],
        "steady_ttr_p50_s": steady["ttr_p50_s"],
        "steady_ttr_p99_s": steady["ttr_p99_s"],
        "steady_tasks_per_s": steady["tasks_per_s"],
        "steady_all_ready": steady["ready"] == steady["accepted"] == n,
        "chaos_ready_share": chaos["ready_share"],
        "chaos_kills": len(chaos["kills"]),
        "chaos_max_deliver": chaos["max_deliver"],
        "chaos_reruns": len(chaos_runs) - 1,
        # a chaos run over before its first kill proves nothing (raise --n)
        "met": (chaos["ready"] == chaos["accepted"] and chaos["accepted"] > 0 and not chaos["timed_out"])
        if chaos["kills"]
        else None,
    }
    result = {
        "clip": {"width": WIDTH, "height": HEIGHT, "seconds": SECONDS, "fps": FPS, "bytes": len(clip)},
        "clients": CLIENTS,
        "kill_every_s": KILL_EVERY_S,
        "steady": steady,
        "chaos_runs": chaos_runs,
        "summary": summary,
    }
    if peers:
        result["peers"] = peers
        summary.update(peer_summary(steady, peers))
    return result


def peer_summary(steady: dict, peers: list[dict]) -> dict:
    """The peer's figures beside the mesh's steady run: ratios are vidmesh / celery
    (above 1: vidmesh made more videos per minute)."""

    def ratio(a, b):
        return round(a / b, 2) if a and b else None

    out = {}
    for row in peers:
        prefix = peer_key(row)
        out[f"{prefix}_videos_per_min"] = row["videos_per_min"]
        out[f"{prefix}_ttr_p50_s"] = row["ttr_p50_s"]
        out[f"{prefix}_ttr_p99_s"] = row["ttr_p99_s"]
        out["ratio_vs_" + prefix] = ratio(steady["videos_per_min"], row["videos_per_min"])
    return out


def peer_key(row: dict) -> str:
    """The summary's name of a peer row: `celery` is the baseline (the probe in a fresh
    process per upload); the others say where their probe runs."""
    return row["peer"] if row["probe"] == "process" else f"{row['peer']}_probe_in_{row['probe']}"


def table(result: dict) -> Table:
    s = result["summary"]
    t = figures_table(
        f"load: {s['n']} clips of 2 s 640x360 from {result['clients']} clients "
        f"(360p + thumbnail each), 2 transcoder processes"
        + ("; celery: 1 worker of 2 prefork processes" if result.get("peers") else ""),
        (
            "run",
            "ready / accepted",
            "failed",
            "videos/min",
            "time to ready p50 / p99",
            "tasks/s",
            "429s",
            "kills",
            "redeliveries",
            "wall",
        ),
    )
    for row in [result["steady"], *result["chaos_runs"]]:
        label = row["label"] + (f" (max_deliver {row['max_deliver']})" if row["chaos"] else "")
        if result.get("peers") and not row["chaos"]:
            label = "vidmesh steady"
        redelivered = sum(q.get("extra_deliveries", 0) for q in row["queues"].values() if isinstance(q, dict))
        t.add_row(
            label,
            f"{row['ready']} / {row['accepted']} ({row['ready_share']:.0%})",
            ", ".join(f"{k} {v}" for k, v in row["failure_codes"].items()) or "0",
            f"{row['videos_per_min']:.1f}",
            f"{row['ttr_p50_s']} / {row['ttr_p99_s']} s",
            f"{row['tasks_per_s']:.2f}",
            str(row["http_429"]),
            str(len(row["kills"])) if row["chaos"] else "-",
            str(redelivered),
            f"{row['wall_s']:.0f} s" + (" [bold red]TIMED OUT[/]" if row["timed_out"] else ""),
        )
        if row is result["steady"]:
            for p in result.get("peers", []):
                add_peer_row(t, p)
    t.caption = (
        f"chaos: SIGKILL one live transcoder every {result['kill_every_s']:g} s until every video is terminal; "
        f"all accepted videos ready: {verdict(s['met'])}"
        + ("" if s["chaos_kills"] else " (the run ended before the first kill: raise --n)")
    )
    for p in result.get("peers", []):
        ratio = s.get("ratio_vs_" + peer_key(p))
        t.caption += f"\nvideos/min, vidmesh / {p['label']}: {ratio}x" if ratio else ""
    return t


def add_peer_row(t: Table, row: dict) -> None:
    """A peer's steady run (bench/peer_celery.py): its time to done is to the chord's `done`."""
    t.add_row(
        row["label"],
        f"{row['ready']} / {row['accepted']} ({row['ready_share']:.0%})",
        str(row["failed"]),
        f"{row['videos_per_min']:.1f}",
        f"{row['ttr_p50_s']} / {row['ttr_p99_s']} s",
        f"{row['tasks_per_s']:.2f}",
        "-",
        "-",
        "-",
        f"{row['wall_s']:.0f} s" + (" [bold red]TIMED OUT[/]" if row["timed_out"] else ""),
    )
