"""Benchmarks: stock_pipeline_job against this machine's limit, the peers and the course approach.

Run `python -m benchmarks.run` (or `make bench`); `--quick` is the small version CI runs.
See README.md, section "Benchmarks".
"""
