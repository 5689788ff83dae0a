"""Benchmarks, run on demand (`python -m bench.<name>`); see docs/benchmarks.md."""
