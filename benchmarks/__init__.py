"""Benchmarks: stock_pipeline_job against the course approach and this machine's limit.

Run `python -m benchmarks.run` (or `make bench`); `--quick` is the small version CI runs.
See README.md, section "Benchmarks".
"""
