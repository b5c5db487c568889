"""`benchmark.py speedrun`: wall time of training until the validation loss reaches the reference's.

The reference is nanoGPT's CPU Shakespeare run (`reference.py`'s loop on `experiment=shakespeare_char_cpu`);
each candidate is a trainer config (default `experiment=shakespeare_char_speedrun`). All run their full
`trainer.max_steps` in one process, one after another, the order reversed every round, and are evaluated
every `--eval-every` steps on the WHOLE validation split (the last `data.val_fraction` of the corpus, in
consecutive windows of `model.block_size`: every token scored once). Evaluation is not counted: the clock
runs during training steps only. The target is the reference's final validation loss; a config's time to
target is its training time at the first evaluation at or below it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gptforge.benchmarks.reference import ReferenceRunner
from gptforge.benchmarks.train import TrainerRunner
from gptforge.cli import HelpFormatter
from gptforge.data.corpus import load_corpus
from gptforge.eval.loss import consecutive_windows, loss_sums

REFERENCE = "experiment=shakespeare_char_cpu"
SPEEDRUN = "experiment=shakespeare_char_speedrun"
# --tiny: a few steps of a small model on a slice of the validation split, end to end in seconds
TINY = ["trainer.max_steps=6", "scheduler.warmup_steps=2", "model.n_layer=1", "model.n_embd=32"]
TINY_VAL_TOKENS = 2048


@dataclass
class Curve:
    """One run: (training seconds, step, whole-split val loss) at every evaluation."""

    label: str
    points: list[tuple[float, int, float]] = field(default_factory=list)
    params: int = 0

    @property
    def final_loss(self) -> float:
        return self.points[-1][2]

    def time_to(self, target: float) -> float | None:
        """Training seconds at the first evaluation at or below `target`; None if it never gets there."""
        return next((seconds for seconds, _, loss in self.points if loss <= target), None)

    def loss_at(self, step: int) -> float:
        """The loss of the last evaluation at or before `step`."""
        return [loss for _, s, loss in self.points if s <= step][-1]


class Contender:
    """A runner (reference loop or trainer) with what the race needs: step, whole-split loss, params."""

    def __init__(self, spec: str, run_dir: Path, extra: list[str], max_val_tokens: int | None) -> None:
        words = shlex.split(spec)
        self.label = spec
        self.is_reference = words[:1] == ["reference"]
        overrides = [*(words[1:] if self.is_reference else words), *extra]
        if self.is_reference:
            runner = ReferenceRunner(overrides, synthetic=False)
            self.model, cfg = runner.model, runner.cfg
            self.max_steps = cfg.trainer.max_steps
            chars = sorted(set(Path(cfg.data.path).read_text(encoding="utf-8")))
            stoi = {ch: i for i, ch in enumerate(chars)}
            self.encode: Callable[[str], list[int]] = lambda text: [stoi[c] for c in text]
            self.batch_loss = self._reference_loss
        else:
            runner = TrainerRunner(overrides, run_dir, synthetic=False)
            trainer = runner.trainer
            self.model, cfg = trainer.strategy.unwrapped_model, trainer.cfg
            self.max_steps = cfg.trainer.max_steps
            self.encode = trainer.tokenizer.encode
            self.batch_loss = trainer.strategy.eval_loss
        self.runner, self.cfg = runner, cfg
        _, val_text = load_corpus(cfg.data)
        ids = torch.tensor(self.encode(val_text))
        self.val_ids = ids[: max_val_tokens + 1] if max_val_tokens else ids
        self.params = sum(p.numel() for p in {id(p): p for p in self.model.parameters()}.values())

    @torch.no_grad()
    def _reference_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.model(inputs.to(self.runner.device), targets.to(self.runner.device))[1]

    def val_loss(self) -> float:
        """Token-weighted cross-entropy over the whole validation split, dropout off."""
        self.model.eval()
        try:
            windows = consecutive_windows(self.val_ids, self.cfg.model.block_size, 64)
            total, tokens = loss_sums(self.batch_loss, windows)
        finally:
            self.model.train()
        return total.item() / tokens

    def race(self, eval_every: int, target: float | None = None, progress: bool = False) -> Curve:
        """Train, timing the steps only; evaluate every `eval_every` steps and at the end, and stop at
        the first evaluation at or below `target` (a known reference's final loss)."""
        curve, seconds = Curve(self.label, params=self.params), 0.0
        curve.points.append((0.0, 0, self.val_loss()))
        for step in range(1, self.max_steps + 1):
            start = time.perf_counter()
            self.runner.step()
            if self.runner.device.type == "cuda":
                torch.cuda.synchronize(self.runner.device)
            seconds += time.perf_counter() - start
            if step % eval_every == 0 or step == self.max_steps:
                curve.points.append((seconds, step, self.val_loss()))
                if progress:
                    print(
                        f"  step {step}: val loss {curve.points[-1][2]:.4f} after {seconds:.1f} s", flush=True
                    )
                if target is not None and curve.points[-1][2] <= target:
                    break
        return curve

    def close(self) -> None:
        self.runner.close()


def bench_speedrun(args: argparse.Namespace) -> None:
    extra = [f"data.path={args.corpus}"] if args.corpus else []
    extra += TINY if args.tiny else []
    max_val_tokens = TINY_VAL_TOKENS if args.tiny else None
    eval_every = {
        "reference": 2 if args.tiny else args.reference_eval_every,
        "trainer": 2 if args.tiny else args.eval_every,
    }
    specs = [f"reference {args.reference}", *(args.candidate or [SPEEDRUN])]
    curves: dict[str, list[Curve]] = {spec: [] for spec in specs}
    with tempfile.TemporaryDirectory(prefix="gptforge-speedrun-") as tmp:
        for round_index in range(args.rounds):
            order = specs if round_index % 2 == 0 else specs[::-1]  # a drifting machine favours none
            for i, spec in enumerate(order):
                torch.manual_seed(0)
                contender = Contender(spec, Path(tmp) / f"r{round_index}_{i}", extra, max_val_tokens)
                print(f"round {round_index + 1}: {spec} ({contender.params} parameters)", flush=True)
                try:
                    cadence = eval_every["reference" if contender.is_reference else "trainer"]
                    finals = [c.final_loss for c in curves[specs[0]]]
                    stops = not (contender.is_reference or args.no_stop or not finals)
                    target = statistics.median(finals) if stops else None
                    curves[spec].append(contender.race(cadence, target, progress=not args.tiny))
                finally:
                    contender.close()
                print(f"round {round_index + 1}: {spec}: {describe(curves[spec][-1])}", flush=True)
    print_results(specs, curves, args)


def describe(curve: Curve) -> str:
    seconds, step, loss = curve.points[-1]
    return f"{step} steps in {seconds:.1f} s of training, final val loss {loss:.4f}"


def print_results(specs: list[str], curves: dict[str, list[Curve]], args: argparse.Namespace) -> None:
    reference = curves[specs[0]]
    target = statistics.median(c.final_loss for c in reference)
    at_step = min(c.points[-1][1] for runs in curves.values() for c in runs)  # the last step all reached
    reference_time = statistics.median(c.time_to(target) for c in reference)
    print(
        f"\ntarget: the reference's final val loss {target:.4f} (whole validation split, "
        f"{len(reference)} rounds); times are training only (evaluation excluded), median over rounds"
    )
    at = f"val@{at_step}"
    print(f"{'params':>8s}  {'time to target s':>16s}  {'x reference':>11s}  {at:>9s}  config")
    rows = []
    for spec in specs:
        runs = curves[spec]
        times = [c.time_to(target) for c in runs]
        reached = [t for t in times if t is not None]
        median = statistics.median(reached) if len(reached) == len(runs) else None
        ratio = median / reference_time if median is not None else None
        loss_at = statistics.median(c.loss_at(at_step) for c in runs)
        shown = f"{median:16.1f}" if median is not None else f"{'not reached':>16s}"
        shown_ratio = f"{ratio:11.3f}" if ratio is not None else f"{'-':>11s}"
        print(f"{runs[0].params:8d}  {shown}  {shown_ratio}  {loss_at:9.4f}  {spec}")
        rows.append(
            {
                "config": spec,
                "params": runs[0].params,
                "time_to_target_s": median,
                "ratio": ratio,
                "final_val_loss": statistics.median(c.final_loss for c in runs),
                f"val_loss_at_{at_step}": loss_at,
                "curves": [c.points for c in runs],
            }
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"target": target, "rows": rows}, indent=1) + "\n")


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    speedrun = commands.add_parser(
        "speedrun",
        help="wall time to the reference's val loss: nanoGPT's CPU Shakespeare run against a config",
        formatter_class=HelpFormatter,
    )
    speedrun.add_argument(
        "--reference", default=REFERENCE, help="overrides of the reference loop (nanoGPT-style)"
    )
    speedrun.add_argument(
        "--candidate",
        action="append",
        help=f"a quoted override list of a trainer config to race (repeatable; default: {SPEEDRUN})",
    )
    speedrun.add_argument("--corpus", help="a text file to use instead of each config's data.path")
    speedrun.add_argument("--rounds", type=int, default=1, help="rounds; the order is reversed every round")
    speedrun.add_argument(
        "--eval-every", type=int, default=50, help="steps between whole-split evaluations of a candidate"
    )
    speedrun.add_argument(
        "--reference-eval-every",
        type=int,
        default=250,
        help="steps between the reference's evaluations (its target is its final loss)",
    )
    speedrun.add_argument(
        "--no-stop", action="store_true", help="train candidates to their max_steps, not only to the target"
    )
    speedrun.add_argument("--json", help="also write the results and curves to this JSON file")
    speedrun.add_argument("--tiny", action="store_true", help="a few steps of a small model: seconds")
    speedrun.set_defaults(run=bench_speedrun)
    return speedrun
