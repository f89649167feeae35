"""Benchmarks: `python -m benchmarks.<name> [--quick] [--out DIR]`, or `scoresde bench <name>`."""
