"""`benchmark.py train`: training tokens/s, step time, MFU and peak memory of one config, or two alternated.

The real trainer is built from Hydra overrides (composed as scripts/train.py composes them); warm-up steps
(compilation, allocator and cache warm-up) are excluded, then rounds of steps are timed. Evaluation and
checkpoints are off: the figures are training alone. `--compare A B` builds both once and alternates them
(A B, B A, ...), so that a machine whose speed drifts or is shared still gives a trustworthy ratio B/A.
`reference [overrides]` in place of a trainer's overrides is the plain PyTorch loop of `reference.py`.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gptforge.benchmarks.reference import ReferenceRunner
from gptforge.cli import HelpFormatter
from gptforge.compose import compose

REFERENCE = "reference"  # in place of a config's overrides: the plain PyTorch loop

TRAINER_DEFAULTS = {  # the benchmark times training alone, in a fresh run directory
    "trainer.eval_every": "0",
    "trainer.checkpoint_every": "0",
    "trainer.resume": "never",
    "trainer.sample_tokens": "0",
}


class SyntheticBatches:
    """Uniformly random (input_ids, targets) micro-batches: the model's speed without any data path."""

    def __init__(self, vocab_size: int, micro_batch_size: int, block_size: int, seed: int) -> None:
        self.shape = (micro_batch_size, block_size)
        self.vocab_size = vocab_size
        self.generator = torch.Generator().manual_seed(seed)

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(0, self.vocab_size, self.shape, generator=self.generator)
        return ids, torch.roll(ids, -1, dims=1)


class TrainerRunner:
    """The real Trainer built from Hydra overrides; one step is `Trainer.run_step()`."""

    def __init__(self, overrides: list[str], run_dir: Path, synthetic: bool) -> None:
        from gptforge.trainer import build_trainer

        given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
        defaults = [f"{k}={v}" for k, v in TRAINER_DEFAULTS.items() if k not in given]
        out_dir = [] if "out_dir" in given else [f"out_dir={run_dir}"]
        cfg = compose([*overrides, *defaults, *out_dir])
        self.trainer = build_trainer(cfg, Path(cfg.out_dir))
        strategy = self.trainer.strategy
        if synthetic:
            self.trainer.train_loader = SyntheticBatches(
                self.trainer.cfg.model.vocab_size,
                cfg.trainer.micro_batch_size,
                cfg.model.block_size,
                cfg.seed,
            )
        self.device = strategy.device
        self.is_main = strategy.is_main
        self.world_size = strategy.world_size
        self.tokens_per_step = self.trainer.tokens_per_step
        self.flops_per_token = self.trainer.meter.flops_per_token
        self.peak_flops_per_sec = self.trainer.meter.peak_per_device
        self.precision = strategy.precision_name
        self.last_loss: float | None = None

    def step(self) -> None:
        record = self.trainer.run_step()
        if "loss" in record:
            self.last_loss = record["loss"]

    def close(self) -> None:
        self.trainer.close()


@dataclass
class Measured:
    """One config under test: its runner and what its rounds measured."""

    label: str
    runner: TrainerRunner | ReferenceRunner
    threads: int = 1
    warmup_s: float = 0.0
    tokens_per_sec: list[float] = field(default_factory=list)
    peak_memory_bytes: int = 0


def build_runner(spec: str, run_dir: Path, synthetic: bool, default_threads: int) -> Measured:
    torch.set_num_threads(default_threads)  # a config's trainer.threads must not leak into the other
    words = shlex.split(spec)
    if words[:1] == [REFERENCE]:
        runner = ReferenceRunner(words[1:], synthetic)
    else:
        runner = TrainerRunner(words, run_dir, synthetic)
    return Measured(spec or "(defaults)", runner, threads=torch.get_num_threads())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_steps(measured: Measured, steps: int) -> float:
    """Seconds for `steps` steps of this config, on its own thread count, device work included."""
    from gptforge.trainer.metrics import peak_memory_bytes

    runner = measured.runner
    torch.set_num_threads(measured.threads)
    _sync(runner.device)
    if runner.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(runner.device)
    start = time.perf_counter()
    for _ in range(steps):
        runner.step()
    _sync(runner.device)
    elapsed = time.perf_counter() - start
    measured.peak_memory_bytes = max(measured.peak_memory_bytes, peak_memory_bytes(runner.device) or 0)
    return elapsed


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}"


def report(measured: Measured) -> str:
    runner = measured.runner
    rates = measured.tokens_per_sec
    median = statistics.median(rates)
    step_ms = 1e3 * runner.tokens_per_step / median
    mfu = "n/a"
    if runner.peak_flops_per_sec:
        mfu = f"{runner.flops_per_token * median / (runner.peak_flops_per_sec * runner.world_size):.1%}"
    loss = f"{runner.last_loss:.3f}" if runner.last_loss is not None else "-"
    return (
        f"{_si(median):>7s} ({_si(min(rates))}-{_si(max(rates))})  {step_ms:8.1f}  {mfu:>6s}  "
        f"{measured.peak_memory_bytes / 2**30:7.2f}  {measured.warmup_s:7.1f}  {loss:>6s}"
    )


def measure_alternating(
    specs: list[str], run_root: Path, synthetic: bool, warmup_steps: int, steps: int, rounds: int
) -> tuple[list[Measured], list[float]]:
    """Build each config once, warm each up, then time `rounds` rounds of `steps` steps, alternating the
    order (A B, B A, ...); returns the measured configs (closed) and, for two, each round's ratio B/A."""
    default_threads = torch.get_num_threads()
    configs: list[Measured] = []
    try:
        for i, spec in enumerate(specs):
            configs.append(build_runner(spec, run_root / f"config_{i}", synthetic, default_threads))
        for measured in configs:  # compile, allocator and cache warm-up: not throughput
            measured.warmup_s = run_steps(measured, warmup_steps)
        ratios = []
        for round_index in range(rounds):
            # A B, then B A: a machine that speeds up or slows down during the run favours neither
            order = configs if round_index % 2 == 0 else configs[::-1]
            seconds = {id(m): run_steps(m, steps) for m in order}
            for measured in configs:
                measured.tokens_per_sec.append(
                    steps * measured.runner.tokens_per_step / seconds[id(measured)]
                )
            if len(configs) == 2:
                ratios.append(configs[1].tokens_per_sec[-1] / configs[0].tokens_per_sec[-1])
    finally:
        for measured in configs:
            measured.runner.close()
    return configs, ratios


def bench_train(args: argparse.Namespace) -> None:
    specs = args.compare if args.compare else [shlex.join(args.overrides)]
    synthetic = args.data == "synthetic"
    with tempfile.TemporaryDirectory(prefix="gptforge-bench-") as tmp:
        configs, ratios = measure_alternating(
            specs, Path(tmp), synthetic, args.warmup_steps, args.steps, args.rounds
        )
    if configs[0].runner.is_main:
        print_results(args, configs, ratios, synthetic)


def print_results(
    args: argparse.Namespace, configs: list[Measured], ratios: list[float], synthetic: bool
) -> None:
    first = configs[0].runner
    device = first.device.type
    threads = "/".join(str(m.threads) for m in configs)
    print(
        f"device {device}, torch {torch.__version__}, threads {threads}, "
        f"data {'synthetic' if synthetic else 'real'}; "
        f"{args.rounds} rounds x {args.steps} steps per config after {args.warmup_steps} warm-up steps"
        + (", alternating A B / B A" if len(configs) == 2 else "")
    )
    memory = "CUDA max allocated" if device == "cuda" else "process peak RSS, all configs together"
    print(f"tokens/s: median over rounds (min-max); peak mem: {memory}; loss: at the last logged step")
    columns = f"{'step ms':>8s}  {'MFU':>6s}  {'mem GiB':>7s}  {'warm-s':>7s}  {'loss':>6s}"
    print(f"{'':3s}{'tokens/s':>22s}  {columns}")
    for name, measured in zip("AB", configs, strict=False):
        runner = measured.runner
        print(f"{name}  {report(measured)}")
        detail = (
            f"   {name} = {measured.label} | {runner.precision} | {runner.tokens_per_step} tokens/step | "
            f"{_si(runner.flops_per_token)}FLOP/token"
        )
        print(detail)
    if ratios:
        print(
            f"ratio B/A (tokens/s): {statistics.median(ratios):.3f} "
            f"(median of {len(ratios)} rounds; min {min(ratios):.3f}, max {max(ratios):.3f})"
        )
        # on a shared machine the fastest round of each config is the one least disturbed by others
        best = max(configs[1].tokens_per_sec) / max(configs[0].tokens_per_sec)
        print(f"ratio B/A of each config's fastest round: {best:.3f}")
    sys.stdout.flush()


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    train = commands.add_parser(
        "train",
        help="training tokens/s, MFU and peak memory of one config or two",
        formatter_class=HelpFormatter,
    )
    train.add_argument("overrides", nargs="*", help="Hydra overrides, as for scripts/train.py")
    train.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help='two quoted override lists (or "reference [overrides]"), alternated; prints the ratio B/A',
    )
    train.add_argument("--steps", type=int, default=100, help="timed steps per config per round")
    train.add_argument("--rounds", type=int, default=5, help="rounds of --steps steps per config")
    train.add_argument("--warmup-steps", type=int, default=20, help="untimed steps per config first")
    train.add_argument(
        "--data", choices=("real", "synthetic"), default="real", help="the config's data or random token ids"
    )
    train.set_defaults(run=bench_train)
    return train
