"""Scheduled jobs against a real nats-server: schedules fired by the server into the stream,
handled once per tick by two scheduler replicas; retention with an injected clock; the
pipeline's re-drive of a video whose task was lost, on the ticks of the `redrive` schedule
(with the real catalog, pipeline, transcoder and thumbnailer running in this process), and
the daily usage report."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

import msgspec
import pytest
from nats.js import api
from nats.js.errors import NotFoundError
from typer.testing import CliRunner

from services import mesh, provision
from services.catalog import service as catalog
from services.gateway.uploads import new_video_id
from services.pipeline import jobs as pipeline_jobs
from services.pipeline import redrive
from services.pipeline import service as pipeline
from services.scheduler import admin, jobs, schedules
from services.scheduler import declaration as scheduler_declaration
from services.scheduler import service as scheduler
from services.thumbnailer import declaration as thumbnailer_declaration
from services.thumbnailer import service as thumbnailer
from services.transcoder import service as transcoder
from shared import contracts, runs, topology
from shared.bus import Bus
from shared.consumer import ConsumerLoop
from shared.contracts import (
    AUDIO_TASK,
    STITCH_TASK,
    THUMBNAIL_TASK,
    ExtractThumbnail,
    GetVideo,
    ScheduleTick,
    SourceInfo,
    UsageReported,
    Video,
    VideoUploaded,
    chunk_task,
)
from shared.kvscan import entries
from tests.clips import make_clip
from tests.conftest import NatsServer
from tests.settings import MeshSettings

pytestmark = pytest.mark.timeout(120)

DAY = 86400.0
STUCK_AFTER_S = 600.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = NatsServer(tmp_path_factory.mktemp("nats-scheduler")).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def settings(server, tmp_path_factory):
    return MeshSettings.load(
        {
            "NATS_URL": server.url,
            "VIDMESH_TMP_DIR": str(tmp_path_factory.mktemp("work")),
            "VIDMESH_RETENTION_DAYS": "10",
            "VIDMESH_RETENTION_DAYS_BY_TENANT": "acme:30,keep:0",
            "VIDMESH_STUCK_AFTER_S": str(STUCK_AFTER_S),
            "VIDMESH_REDRIVE_MAX_ATTEMPTS": "2",
            "VIDMESH_TASK_ACK_WAIT_S": "5",
        }
    )


@pytest.fixture(scope="module")
async def bus(settings):
    b = await Bus.connect(settings, "test")
    await provision.ensure(b.js, settings, mesh.consumers())
    yield b
    await b.close()


@asynccontextmanager
async def loops(settings, spec, kind, handler, count=1, **kw):
    """`count` replicas of one consumer, each on its own connection (as separate processes)."""
    buses = [await Bus.connect(settings, f"{spec.durable}-{i}") for i in range(count)]
    running = [ConsumerLoop(b, spec, kind, handler, **kw) for b in buses]
    tasks = [asyncio.create_task(loop.run()) for loop in running]
    try:
        yield buses
    finally:
        for loop in running:
            await loop.stop(5)
        for task in tasks:
            task.cancel()
        for b in buses:
            await b.close()


@pytest.fixture(scope="module")
async def replicas(settings, bus):
    """Two scheduler replicas pulling ticks from the one work-queue consumer."""
    async with loops(
        settings, scheduler_declaration.TICKS, ScheduleTick, scheduler.on_tick, count=2, concurrency=4
    ) as b:
        yield b


@pytest.fixture(scope="module")
async def services(settings, bus):
    """catalog, pipeline and a transcoder, as they run in production (not the thumbnailer:
    tests start it when they want thumbnails to happen)."""
    started = []
    for svc in (catalog.service, pipeline.service, transcoder.service):
        svc.settings = settings
        await svc._start()
        started.append(svc)
    yield
    for svc in started:
        await svc.stop()


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    return make_clip(str(tmp_path_factory.mktemp("clips") / "tiny.mp4"), width=320, height=240, seconds=1.0)


async def until(condition, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.05)


async def upload(bus: Bus, tenant: str, clip: str, created_at: float | None = None) -> str:
    """What the gateway does for an accepted upload: store the source, publish the event,
    answer once the catalog's record holds it."""
    video_id = new_video_id()
    key = topology.source_key(tenant, video_id)
    info = await bus.media.put_file(key, clip)
    source = SourceInfo(
        size=info.size,
        container="mp4",
        duration=1.0,
        width=320,
        height=240,
        fps=30.0,
        video_codec="h264",
        audio_codec="aac",
    )
    event = VideoUploaded(
        video_id=video_id, tenant=tenant, object=key, created_at=created_at or time.time(), source=source
    )
    seq = await bus.publish(event, msg_id=f"{video_id}:uploaded")
    await video(bus, tenant, video_id, after_seq=seq)
    return video_id


async def video(bus: Bus, tenant: str, video_id: str, after_seq: int = 0) -> Video:
    ask = GetVideo(tenant=tenant, video_id=video_id, after_seq=after_seq)
    return await bus.request(topology.RPC_CATALOG_GET, ask, Video)


# --- reading a bucket completely (what re-drive and retention scan) ----------------------------


async def test_a_kv_scan_returns_every_live_key_even_while_they_are_written(bus):
    kv = await bus.js.create_key_value(api.KeyValueConfig(bucket="scan_test", history=1))
    for i in range(150):
        await kv.put(f"t.k{i:03d}", b"v0")
    await kv.delete("t.k000")
    stop = asyncio.Event()

    async def writer():
        n = 0
        while not stop.is_set():
            n += 1
            await kv.put(f"t.k{1 + n % 149:03d}", f"v{n}".encode())

    writing = asyncio.create_task(writer())
    try:
        for _ in range(10):
            keys = [e.key async for e in entries(bus.js, "scan_test", "t.*", meta_only=True)]
            assert sorted(keys) == [f"t.k{i:03d}" for i in range(1, 150)]
    finally:
        stop.set()
        await writing
    assert [e.key async for e in entries(bus.js, "scan_test", "nobody.*")] == []
    left = await bus.js.consumers_info("KV_scan_test")
    assert left == []  # every scan removed its consumer


# --- the server fires the schedules; each tick is handled once ---------------------------------


async def test_an_every_second_schedule_fires_into_the_stream_and_runs_once_per_tick_on_two_replicas(bus, replicas):
    handled: list[tuple[str, float]] = []

    async def heartbeat(b: Bus, now: float) -> dict:
        handled.append((b.service, now))
        return {"handled": len(handled)}

    scheduler.register("heartbeat", heartbeat, "test job")
    schedule = schedules.Schedule("heartbeat", "@every 1s", tick_ttl_s=60)
    try:
        # both replicas start at once and declare the same schedule: one definition
        outcomes = await asyncio.gather(*(schedules.declare(b.js, schedule) for b in replicas))
        assert sorted(outcomes) == ["created", "unchanged"]
        assert [d.name for d in await schedules.definitions(bus.js)].count("heartbeat") == 1
        await until(lambda: asyncio.sleep(0, len(handled) >= 4), 10, "four ticks")
        assert await schedules.remove(bus.js, "heartbeat")
        record = (await runs.last_runs(bus))["heartbeat"]
    finally:
        scheduler.JOBS.pop("heartbeat", None)
    times = [now for _, now in handled]
    assert len(set(times)) == len(times), f"a tick was handled twice: {handled}"
    gaps = [b - a for a, b in zip(sorted(times), sorted(times)[1:])]
    assert all(gap > 0.8 for gap in gaps), f"more than one tick per second: {gaps}"  # one schedule, not two
    seqs = [r.seq for r in record.recent]
    assert len(seqs) == len(set(seqs)) >= 4  # distinct ticks (stream sequences)
    assert record.last.next_at  # the server says when it fires next
    assert record.outcome == "ok" and not record.last.manual
    # the ticks are gone from the work queue once handled
    info = await bus.js.stream_info(topology.SCHEDULES, subjects_filter=topology.TICK_PREFIX + ".heartbeat")
    assert not (info.state.subjects or {}).get(topology.tick_subject("heartbeat"))


async def test_declaring_is_idempotent_a_change_updates_and_off_removes(bus, settings):
    probe = schedules.Schedule("probe", "0 0 3 * * *")
    assert await schedules.declare(bus.js, probe) == "created"
    seq = {d.name: d.seq for d in await schedules.definitions(bus.js)}["probe"]
    assert await schedules.declare(bus.js, probe) == "unchanged"
    assert {d.name: d.seq for d in await schedules.definitions(bus.js)}["probe"] == seq  # not republished
    assert await schedules.declare(bus.js, schedules.Schedule("probe", "0 30 3 * * *")) == "updated"
    found = {d.name: d for d in await schedules.definitions(bus.js)}
    assert found["probe"].spec == "0 30 3 * * *" and found["probe"].target == "scheduler.cmd.tick.probe"
    assert await schedules.remove(bus.js, "probe") and not await schedules.remove(bus.js, "probe")

    # the scheduler's start-up: configured schedules declared, "off" ones removed
    on = await Bus.connect(settings, "startup")
    off_settings = MeshSettings.load({"NATS_URL": settings.nats_url, "VIDMESH_SCHEDULE_USAGE_REPORT": "off"})
    off = Bus(on.nc, off_settings, "startup-off")
    try:
        await scheduler.declare_schedules(on)
        declared = {d.name: d for d in await schedules.definitions(bus.js)}
        assert {"retention", "redrive", "usage_report"} <= set(declared)
        # the scheduler declares re-drive's schedule, but its ticks go to the pipeline
        assert declared["redrive"].target == "pipeline.cmd.tick.redrive"
        assert declared["retention"].target == "scheduler.cmd.tick.retention"
        await scheduler.declare_schedules(off)
        names = {d.name for d in await schedules.definitions(bus.js)}
        assert {"retention", "redrive"} <= names and "usage_report" not in names
    finally:
        # the other tests run jobs by hand: no server-fired run may come in between
        for name in settings.schedules:
            await schedules.remove(bus.js, name)
        await on.close()


# --- what re-drive counts as queued ------------------------------------------------------------


async def test_a_task_on_either_media_work_queue_is_queued_not_lost(bus):
    """Chunks, the audio and the stitch wait on TASKS_TRANSCODE, the thumbnail on
    TASKS_THUMBNAIL: re-drive must see each there (no worker runs yet in this module, so
    they stay queued) and call only the others missing."""
    from services.pipeline.plan import plan_video

    vid = new_video_id()
    source = SourceInfo(size=1, duration=20.0, width=320, height=240, audio_codec="aac", cuttable=True)
    plan = plan_video(source, chunk_s=6.0, segment_s=6.0)
    job = pipeline_jobs.new_job(vid, "queued", "queued/x/source", plan)
    job = msgspec.structs.replace(job, tasks={name: "pending" for name in plan.task_names()})
    on_queue = [chunk_task(0), chunk_task(2), AUDIO_TASK, STITCH_TASK, THUMBNAIL_TASK]
    try:
        for name in on_queue:
            await bus.publish(pipeline_jobs.task_message(job, name), msg_id=f"{vid}:{name}")
        assert await redrive.queued_tasks(bus, job) == set(on_queue)
        assert redrive.missing_tasks(job, await redrive.queued_tasks(bus, job)) == [chunk_task(1)]
    finally:  # the workers started by later tests must not find these
        for stream in topology.MEDIA_TASK_STREAMS:
            await bus.js.purge_stream(stream, subject=f"*.cmd.*.queued.{vid}")


# --- retention -----------------------------------------------------------------------------


async def test_retention_deletes_an_old_video_and_leaves_a_new_one(bus, replicas, services, clip):
    t0 = time.time()
    old = await upload(bus, "acme", clip, created_at=t0)  # acme keeps 30 days
    new = await upload(bus, "acme", clip, created_at=t0 + 2 * DAY)
    forever = await upload(bus, "keep", clip, created_at=t0 - 400 * DAY)  # keep: 0 = forever
    other = await upload(bus, "other", clip, created_at=t0)  # default: 10 days
    for tenant, vid in (("acme", old), ("acme", new), ("keep", forever), ("other", other)):
        await until(lambda: _listed(bus, tenant, vid), 10, f"{vid} in the catalog")

    # the clock is injected: the run happens "31 days after" the old upload, now
    seq, run = await admin.run_now(bus, "retention", as_of=t0 + 31 * DAY, timeout=20)
    assert run is not None and run.outcome == "ok", run
    assert run.summary["deleted"] == 2, run
    last = (await runs.last_runs(bus))["retention"].last
    assert last.manual and last.as_of == t0 + 31 * DAY

    assert (await video(bus, "acme", old)).status == "deleted"
    assert (await video(bus, "other", other)).status == "deleted"
    assert await bus.media.info(topology.source_key("acme", old)) is None  # media gone too
    assert (await video(bus, "acme", new)).status != "deleted"
    assert (await video(bus, "keep", forever)).status != "deleted"
    assert await bus.media.info(topology.source_key("acme", new)) is not None


async def _listed(bus, tenant, vid):
    return vid in [v.id async for v in jobs.videos_of(bus, tenant)]


# --- re-drive ------------------------------------------------------------------------------


async def _job(bus, tenant, vid):
    kv = await bus.kv(topology.KV_JOBS)
    try:
        return pipeline_jobs.job_decoder.decode((await kv.get(topology.state_key(tenant, vid))).value)
    except Exception:
        return None


async def _lose_thumbnail_task(bus, tenant, vid) -> None:
    """The thumbnail task of `vid` disappears from its work queue (a lost task)."""
    subject = f"{topology.SUBJECTS[ExtractThumbnail]}.{tenant}.{vid}"

    async def queued():
        try:
            return await bus.js.get_last_msg(topology.TASKS_THUMBNAIL, subject)
        except NotFoundError:
            return None

    msg = await until(queued, 10, f"the thumbnail task of {vid}")
    await bus.js.delete_msg(topology.TASKS_THUMBNAIL, msg.seq)


async def test_the_server_fires_redrive_at_the_pipeline_which_runs_and_records_it(bus, replicas, services):
    schedule = schedules.Schedule("redrive", "@every 1s", tick_ttl_s=60)
    assert schedule.target == topology.tick_subject("redrive") == "pipeline.cmd.tick.redrive"
    await schedules.declare(bus.js, schedule)

    async def fired():
        record = (await runs.last_runs(bus, (topology.KV_PIPELINE,))).get("redrive")
        return record if record and record.last and not record.last.manual else None

    try:
        record = await until(fired, 15, "a server-fired re-drive recorded by the pipeline")
    finally:
        await schedules.remove(bus.js, "redrive")
    assert record.outcome == "ok" and record.last.next_at, record
    assert set(record.summary) == {"processing", "stuck", "republished", "failed"}
    assert "redrive" not in await runs.last_runs(bus, (topology.KV_SCHEDULER,))  # not the scheduler's


async def test_redrive_completes_a_video_whose_task_was_lost(bus, replicas, services, clip, settings):
    vid = await upload(bus, "redrive", clip)
    await _lose_thumbnail_task(bus, "redrive", vid)
    job = await until(lambda: _stitched(bus, "redrive", vid), 30, "the chunk, the audio and the stitch to be done")
    assert job.status == "processing" and job.tasks[THUMBNAIL_TASK] == "pending"
    assert {job.tasks[t] for t in (chunk_task(0), AUDIO_TASK, STITCH_TASK)} == {"done"}

    # not stuck yet: no progress for less than VIDMESH_STUCK_AFTER_S
    _, run = await admin.run_now(bus, "redrive", as_of=time.time(), timeout=20)
    assert run.outcome == "ok" and run.summary["republished"] == 0 and run.summary["processing"] >= 1

    async with loops(settings, thumbnailer_declaration.TASKS, ExtractThumbnail, thumbnailer.extract_thumbnail):
        seq, run = await admin.run_now(bus, "redrive", as_of=time.time() + STUCK_AFTER_S + 1, timeout=20)
        assert run.outcome == "ok" and run.summary["stuck"] == 1 and run.summary["republished"] == 1, run
        done = await until(lambda: _terminal(bus, "redrive", vid), 30, "the re-driven video to finish")
    assert done.status == "ready" and done.thumbnail is not None, done
    # the pipeline ran it and keeps the record; the scheduler has no part in it
    assert (await runs.last_runs(bus, (topology.KV_PIPELINE,)))["redrive"].result(seq) == run
    assert [e.key async for e in entries(bus.js, topology.KV_SCHEDULER, meta_only=True) if "redrive" in e.key] == []
    # the finished video's attempt count is forgotten on the next run
    key = redrive.ATTEMPTS_PREFIX + topology.state_key("redrive", vid)
    assert key in [e.key async for e in entries(bus.js, topology.KV_PIPELINE, "redrive.>", meta_only=True)]
    await admin.run_now(bus, "redrive", as_of=time.time(), timeout=20)
    assert key not in [e.key async for e in entries(bus.js, topology.KV_PIPELINE, "redrive.>", meta_only=True)]


async def _stitched(bus, tenant, vid):
    job = await _job(bus, tenant, vid)
    return job if job and job.tasks.get(STITCH_TASK) == "done" else None


async def _terminal(bus, tenant, vid):
    v = await video(bus, tenant, vid)
    return v if v.status in ("ready", "failed") else None


async def test_redrive_fails_a_video_still_stuck_after_the_last_attempt(bus, replicas, services, clip):
    vid = await upload(bus, "stuck", clip)
    # only the thumbnail goes missing: let the chunk, the audio and the stitch finish first,
    # so each re-drive republishes exactly that one task
    await until(lambda: _stitched(bus, "stuck", vid), 30, "the rendition to be stitched")
    now = time.time() + STUCK_AFTER_S + 1
    for attempt in (1, 2):  # VIDMESH_REDRIVE_MAX_ATTEMPTS=2, and the task gets lost every time
        await _lose_thumbnail_task(bus, "stuck", vid)
        _, run = await admin.run_now(bus, "redrive", as_of=now, timeout=20)
        assert run.summary["republished"] == 1, (attempt, run)
        now += STUCK_AFTER_S + 1
    await _lose_thumbnail_task(bus, "stuck", vid)
    _, run = await admin.run_now(bus, "redrive", as_of=now, timeout=20)
    assert run.summary["failed"] == 1, run
    failed = await until(lambda: _terminal(bus, "stuck", vid), 20, "the stuck video to fail")
    assert failed.status == "failed" and failed.error.code == "stuck", failed
    assert failed.error.message == f"{THUMBNAIL_TASK}: no progress for {STUCK_AFTER_S:g}s after 2 re-drives"
    # failed is final for re-drive: a later run leaves it alone
    _, run = await admin.run_now(bus, "redrive", as_of=now + STUCK_AFTER_S + 1, timeout=20)
    assert run.summary["failed"] == 0 and run.summary["republished"] == 0, run


# --- usage report --------------------------------------------------------------------------


async def test_the_usage_report_counts_each_tenants_day(bus, replicas, services, clip):
    vid = await upload(bus, "usage", clip)

    async def rendition():
        v = await video(bus, "usage", vid)
        return v if v.renditions else None

    v = await until(rendition, 30, "the rendition")
    tomorrow = (time.time() // DAY + 1) * DAY + 300  # 00:05 UTC tomorrow: reports today
    _, run = await admin.run_now(bus, "usage_report", as_of=tomorrow, timeout=20)
    assert run.outcome == "ok" and run.summary["tenants"] >= 1
    day = run.summary["day"]
    msg = await bus.js.get_last_msg(topology.REPORTS, topology.usage_subject("usage", day))
    report = contracts.decoder(UsageReported).decode(msg.data)
    assert (report.videos, report.videos_created) == (1, 1)
    assert report.seconds_transcoded == pytest.approx(1.0, abs=0.2)
    assert report.bytes_stored == v.source.size + v.renditions[0].size
    # a re-run of the same day replaces the report instead of adding one
    await admin.run_now(bus, "usage_report", as_of=tomorrow, timeout=20)
    info = await bus.js.stream_info(topology.REPORTS, subjects_filter=topology.usage_subject("usage", day))
    assert info.state.subjects == {topology.usage_subject("usage", day): 1}


# --- the command line ----------------------------------------------------------------------


def test_vidmesh_schedules_lists_and_queues_a_run(server, bus):
    from services.cli import cli

    runner = CliRunner()
    env = {"NATS_URL": server.url}
    listed = runner.invoke(cli, ["schedules"], env=env)
    assert listed.exit_code == 0, listed.output
    for name in ("retention", "redrive", "usage_report"):
        assert name in listed.output
    queued = runner.invoke(cli, ["schedules", "run", "usage_report", "--no-wait"], env=env)
    assert queued.exit_code == 0 and "queued" in queued.output, queued.output
    unknown = runner.invoke(cli, ["schedules", "run", "nope"], env=env)
    assert unknown.exit_code != 0


async def test_vidmesh_schedules_runs_redrive_through_the_pipeline_and_lists_its_last_run(server, bus, services):
    from services.cli import cli

    runner = CliRunner()
    env = {"NATS_URL": server.url}
    # in a thread: the command runs its own event loop while this one runs the pipeline
    ran = await asyncio.to_thread(runner.invoke, cli, ["schedules", "run", "redrive", "--timeout", "20"], env=env)
    assert ran.exit_code == 0 and ran.output.startswith("redrive: ok processing="), ran.output
    row = next(r for r in await admin.rows(bus) if r["name"] == "redrive")
    assert row["runs"] >= 1 and row["outcome"] == "ok" and row["last_run"], row
    assert set(row["summary"]) == {"processing", "stuck", "republished", "failed"}, row
    assert row["job"] == scheduler.DESCRIPTIONS["redrive"]
    listed = await asyncio.to_thread(runner.invoke, cli, ["schedules"], env=env)
    assert listed.exit_code == 0 and "redrive" in listed.output, listed.output
