"""The transcoder's bus contract: chunk, audio and stitch tasks in; fragments and downloads
to the object store; progress and results out."""

from shared import contracts as c
from shared import topology as t
from shared.declaration import ConsumerSpec, Declaration, every

TASKS = ConsumerSpec(
    t.TASKS_TRANSCODE, "transcoder", tuple(every(k) for k in (c.EncodeChunk, c.EncodeAudio, c.StitchRenditions))
)

DECLARATION = Declaration(
    "transcoder",
    "Encode chunks of the ladder and the audio as CMAF, stitch the MP4 renditions",
    publishes=(c.ChunkProgress, c.ChunkEncoded, c.AudioEncoded, c.RenditionStitched, c.TaskFailed),
    consumes=(TASKS,),
    media="write",
    reads_messages=(t.EVENTS,),  # was the video deleted? (Direct Get)
    processes_setting="transcoder_procs",
)
