"""Benchmarks, one subcommand each: `train` (training throughput), `data` (loader throughput) and
`speedrun` (wall time to the nanoGPT reference's validation loss).

    python scripts/benchmark.py train experiment=shakespeare_char_cpu --steps 200
    python scripts/benchmark.py train --compare reference "experiment=shakespeare_char_cpu"
    python scripts/benchmark.py train --compare "" "trainer.compile=true"
    python scripts/benchmark.py data --corpus data/tinyshakespeare.txt --workers 2
    python scripts/benchmark.py speedrun --rounds 2

`train` builds the real trainer from Hydra overrides (composed as scripts/train.py composes them), runs
warm-up steps (excluded: compilation, allocator and cache warm-up), then times rounds of steps and prints
tokens/s, step time, MFU and peak memory. Evaluation and checkpoints are off: the figures are training
alone. `--compare A B` builds both once and alternates them (A B, B A, A B, ...), so that a machine whose
speed drifts or is shared still gives a trustworthy ratio B/A. `reference [overrides]` in place of a
trainer's overrides is a plain PyTorch loop in nanoGPT's style on the same hyperparameters: the yardstick.

`data` writes a synthetic corpus of --copies x the corpus into a temp directory, trains a BPE on it,
prepares shards, then times each loader's micro-batches (excluding start-up) and prints one line per path.

`speedrun` trains the reference loop and `experiment=shakespeare_char_speedrun` (or --candidate configs)
one after another, evaluating each on the whole validation split, and prints each one's training time
until its val loss reaches the reference's final one.
"""

from __future__ import annotations

import argparse

from gptforge.benchmarks import data, gpu, speedrun, train
from gptforge.cli import HelpFormatter, run_cli

JOBS = (train, data, speedrun, gpu)  # each adds its subcommand; its module docstring says what it measures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for job in JOBS:
        job.add_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "train" and args.compare and args.overrides:
        parser.error("give overrides either positionally (one config) or in --compare A B, not both")
    args.run(args)


if __name__ == "__main__":
    run_cli(main)
