"""Benchmarks: performance figures, never timed unit tests. Each runs as `python -m perfkit.benchmarks.NAME`."""
