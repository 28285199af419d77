"""Benchmarks: scrape and poll cost against peers, density, and a 10k-VM Prometheus run.

Each module is a command (``python -m bench.<name>``) that prints a table and writes JSON
under ``bench/results/``. ``docs/performance.md`` holds the figures and the exact commands.
"""
