"""The media code the probe, the transcoder and the thumbnailer share: pure PyAV and numpy,
no bus, no HTTP (services must not import each other; shared/ holds only what crosses a
process boundary).

- problems: MediaError (the one error for media that cannot be used: a machine code and a
  message), Cancelled, MediaWarning
- geometry: rotation, sample aspect ratio, displayed size (display aspect ratio)
- source: opening an upload, its video stream (cover art left out) and audio track, its
  first decodable frame, its timeline (origin, where it should end)
- decoding: decoding that skips undecodable packets and counts them
- animated_webp: animated WebP (which FFmpeg cannot decode) as a lossless video
- colour: what a source's colour tags say and what each rendition is tagged with
- tonemap, deinterlace, alpha, rotate: the frame filters
- frames: the frame path (deinterlace -> tone map / colour conversion -> alpha flatten ->
  rotate), once per decoded frame, then the per-rung scale
"""
