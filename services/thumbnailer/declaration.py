"""The thumbnailer's bus contract: thumbnail tasks in, a JPEG to the object store, the
result out."""

from shared import contracts as c
from shared import topology as t
from shared.declaration import ConsumerSpec, Declaration, every

TASKS = ConsumerSpec(t.TASKS_THUMBNAIL, "thumbnailer", (every(c.ExtractThumbnail),))

DECLARATION = Declaration(
    "thumbnailer",
    "Extract the first frame as a JPEG thumbnail",
    publishes=(c.ThumbnailExtracted, c.TaskFailed),
    consumes=(TASKS,),
    media="write",
    reads_messages=(t.EVENTS,),  # was the video deleted? (Direct Get)
)
