"""Side-by-side benchmarks: `python -m benchmarks.vs_trl`."""
