"""vidmesh benchmarks: `python -m bench [NAME ...]`, names in bench/__main__.py's BENCHMARKS and `python -m bench --help` (see README.md)."""
