"""vidmesh benchmarks: `python -m bench [upload|status|pipeline|transcoder_rss]` (see README.md)."""
