"""Benchmarks: `make bench` runs benchmarks/run.py and writes docs/benchmarks.md.

This package is also a Django app during benchmark runs (PICLOUD_EXTRA_APPS)
so the clusters under test find its handlers and tasks.
"""
