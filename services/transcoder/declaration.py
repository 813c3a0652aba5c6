"""The transcoder's bus contract: chunk, audio and stitch tasks in; fragments and downloads
to the object store; progress and results out."""

from shared import topology as t
from shared.contracts import AudioEncoded, ChunkEncoded, ChunkProgress, EncodeAudio, EncodeChunk, RenditionStitched
from shared.contracts import StitchRenditions, TaskFailed
from shared.declaration import ConsumerSpec, Declaration, every

TASKS = ConsumerSpec(t.TASKS_TRANSCODE, "transcoder", tuple(every(k) for k in (EncodeChunk, EncodeAudio, StitchRenditions)))

DECLARATION = Declaration(
    "transcoder",
    "Encode chunks of the ladder and the audio as CMAF, stitch the MP4 renditions",
    publishes=(ChunkProgress, ChunkEncoded, AudioEncoded, RenditionStitched, TaskFailed),
    consumes=(TASKS,),
    media="write",
    reads_messages=(t.EVENTS,),  # was the video deleted? (Direct Get)
    processes_setting="transcoder_procs",
)
