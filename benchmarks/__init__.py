"""Benchmarks of the job service against the real stack, with bare references measured in the same run.

`python -m benchmarks` runs everything (about 10 minutes); `--quick` runs the same code
paths with small sizes (about 2 minutes). Neither asserts speeds: they measure and report.
"""
