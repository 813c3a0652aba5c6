"""vidmesh benchmarks: `python -m bench [upload|probe|status|pipeline|scale|chunk_size|transcoder_rss|load]` (see README.md)."""
