"""Benchmarks: `make bench` runs bench.py (and bench/cpu.py through it); results in bench/results.md."""
