"""What media code reports besides frames: errors that end a task, and warnings that do not."""

from __future__ import annotations

from dataclasses import dataclass


class MediaError(Exception):
    """code "bad_media": the input cannot be used (no decodable video, not a media file);
    retrying will not help. code "encode_failed": writing the output failed."""

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
