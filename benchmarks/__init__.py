"""jattn benchmark harness: `python -m benchmarks.run`, `python -m benchmarks.report`."""
