"""What media code reports besides frames: errors that end a task, and warnings that do not."""

from __future__ import annotations

from dataclasses import dataclass


class MediaError(Exception):
    """Media that cannot be used: `code` is a short machine reason, `message` a sentence for
    people; both reach users as they are (a refused upload's 422 body, a failed video's
    error), and clients match on `code`.

    What the probe refuses an upload with (retrying will not help):
    - "not_media": empty, not a media file, a still image, or neither audio nor video;
    - "no_video_stream": audio only, or a video stream without a picture size;
    - "unsupported_container", "too_many_streams", "too_large", "too_long": over a limit;
    - "unreadable": no frame decodes, or the probe ran out of time or memory.

    What a worker's task fails with:
    - "bad_media": the input cannot be used (no decodable video, not a media file);
      retrying will not help;
    - "encode_failed": writing the output failed; a retry may succeed.
    """

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Cancelled(Exception):
    """should_stop() returned True; nothing was kept."""


@dataclass(frozen=True)
class MediaWarning:
    """Something a viewer may notice that did not stop the work.

    code "damaged_packets": undecodable packets were skipped; "truncated": the media ends
    before the duration the file declares."""

    code: str
    message: str
