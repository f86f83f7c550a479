"""Benchmark scripts (speed and memory figures, never timed tests): ``python -m benchmarks.run``."""
