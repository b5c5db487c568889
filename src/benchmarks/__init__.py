"""Benchmarks behind `scripts/benchmark.py`, one module per job: `train` (training throughput, against the
plain reference loop of `reference`) and `data` (loader throughput). Each module has `add_parser`."""
