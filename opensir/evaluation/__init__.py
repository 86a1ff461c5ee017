"""Benchmark evaluation (``opensir eval``, ``spec.evaluation``): datasets, scoring, metrics, harness."""
