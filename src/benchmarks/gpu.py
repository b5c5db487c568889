"""`benchmark.py gpu`: the one-command GPU check (`scripts/gpu_check.sh`), one markdown table.

On one GPU, in a few minutes including compilation, it measures what only a GPU shows and writes it as
one table (printed, and written to --out):

- the environment: torch, CUDA, the GPU, and the peak FLOP/s that MFU is computed against;
- GPT-2 124M at T=1024 in bf16, eager and compiled: tokens/s, MFU, peak memory;
- the plain reference loop (nanoGPT style, `reference.py`) on the same settings, alternated with ours;
- Llama ~1B under FSDP2 on the one GPU with compile and activation checkpointing: MFU and memory;
- fp8 (torchao float8 linears) against bf16 on that 1B model: speed-up and loss difference after the
  same steps on the same batches;
- the memmap and streaming loaders' tokens/s, against the training rate above;
- 20-step DDP, FSDP2 and ZeRO-2 runs through torchrun, one process each, with a checkpoint: the NCCL paths
  start, step and save.

Every measured pair is alternated (A B, B A, ...) in this one process, so that the ratios hold on a machine
whose speed drifts. `--tiny` runs the same check end to end on a CPU with tiny models (the test suite does);
its figures say only that every path runs. A check that cannot run here (fp8 on a CPU or a pre-Hopper
GPU) is a row that says why, not a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from gptforge.benchmarks.train import Measured, measure_alternating
from gptforge.cli import HelpFormatter
from gptforge.errors import GptforgeError

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Sizes:
    """The settings of one check: the real ones on a GPU, tiny ones on a CPU."""

    gpt2: list[str]
    llama: list[str]
    steps: int
    rounds: int
    warmup: int
    fp8_steps: int
    loader: dict
    run: list[str]
    run_steps: int
    compile: str = "true"  # --tiny: false, since compiling on a CPU costs more than the whole check


SYNTHETIC = ["data=shakespeare_char", "tokenizer=char", "trainer.threads=null"]  # batches: random ids

FULL = Sizes(
    gpt2=[
        *SYNTHETIC,
        "model=gpt2_124m",
        "model.vocab_size=50304",
        "model.block_size=1024",
        "trainer.micro_batch_size=16",
        "trainer.global_batch_size=16",
        "trainer.precision=bf16",
    ],
    llama=[
        *SYNTHETIC,
        "model=llama_1b",
        "model.vocab_size=32768",
        "model.block_size=2048",
        "trainer.micro_batch_size=4",
        "trainer.global_batch_size=4",
        "trainer.precision=bf16",
    ],
    steps=20,
    rounds=3,
    warmup=10,
    fp8_steps=50,
    loader={"copies": 8, "block_size": 1024, "micro_batch_size": 16, "vocab_size": 8192, "seconds": 5.0},
    run=["experiment=smoke", "model=gpt2_124m", "model.block_size=1024", "trainer.micro_batch_size=8"],
    run_steps=20,
)
TINY_MODEL = ["model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=64"]
TINY = Sizes(
    gpt2=[*SYNTHETIC, "model=tiny", *TINY_MODEL, "model.vocab_size=128", "trainer.micro_batch_size=4"],
    llama=[
        *SYNTHETIC,
        "model=llama_tiny",
        *TINY_MODEL,
        "model.n_kv_head=1",
        "model.vocab_size=128",
        "trainer.micro_batch_size=4",
    ],
    steps=2,
    rounds=2,
    warmup=1,
    fp8_steps=2,
    loader={"copies": 1, "block_size": 64, "micro_batch_size": 4, "vocab_size": 300, "seconds": 0.5},
    run=["experiment=smoke", *TINY_MODEL, "trainer.micro_batch_size=4"],
    run_steps=4,
    compile="false",
)


@dataclass
class Row:
    check: str
    config: str
    tokens_per_sec: float | None = None
    mfu: float | None = None
    memory_gib: float | None = None
    result: str = ""

    def markdown(self) -> str:
        rate = f"{self.tokens_per_sec / 1e3:,.1f}K" if self.tokens_per_sec else "-"
        mfu = f"{self.mfu:.1%}" if self.mfu is not None else "-"
        memory = f"{self.memory_gib:.2f}" if self.memory_gib is not None else "-"
        return f"| {self.check} | `{self.config}` | {rate} | {mfu} | {memory} | {self.result} |"


def row_of(check: str, measured: Measured, result: str = "") -> Row:
    runner, rate = measured.runner, statistics.median(measured.tokens_per_sec)
    mfu = None
    if runner.peak_flops_per_sec:
        mfu = runner.flops_per_token * rate / (runner.peak_flops_per_sec * runner.world_size)
    memory = measured.peak_memory_bytes / 2**30 if measured.peak_memory_bytes else None
    return Row(check, measured.label, rate, mfu, memory, result)


def ratio_text(ratios: list[float], what: str) -> str:
    return f"{what} {statistics.median(ratios):.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f})"


class Check:
    """Runs the checks in order; a check that fails is a row saying how, and the others still run."""

    def __init__(self, sizes: Sizes, run_root: Path) -> None:
        self.sizes, self.run_root, self.rows = sizes, run_root, []
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.train_rate: float | None = None

    def pair(
        self, a: list[str], b: list[str], steps: int | None = None
    ) -> tuple[list[Measured], list[float]]:
        s = self.sizes
        specs = [shlex.join(a), shlex.join(b)]
        root = Path(tempfile.mkdtemp(dir=self.run_root))
        configs, ratios = measure_alternating(specs, root, True, s.warmup, steps or s.steps, s.rounds)
        shared = set(a) & set(b)  # the table names what differs; the header lists the shared settings
        for measured, words in zip(configs, (a, b), strict=True):
            measured.label = shlex.join(w for w in words if w not in shared) or "(the same settings)"
        return configs, ratios

    def attempt(self, check: str, config: str, run) -> None:
        try:
            self.rows.extend(run())
        except (GptforgeError, RuntimeError, OSError, ImportError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            self.rows.append(Row(check, config, result=f"not run: {first[:200]}"))

    def gpt2_compile(self) -> list[Row]:
        eager = [*self.sizes.gpt2, "trainer.compile=false"]
        compiled = [*self.sizes.gpt2, f"trainer.compile={self.sizes.compile}"]
        (a, b), ratios = self.pair(eager, compiled)
        self.train_rate = statistics.median(b.tokens_per_sec)
        return [row_of("GPT-2 eager", a), row_of("GPT-2 compiled", b, ratio_text(ratios, "compiled/eager"))]

    def reference(self) -> list[Row]:
        ours = [*self.sizes.gpt2, f"trainer.compile={self.sizes.compile}"]
        (a, b), ratios = self.pair(["reference", *ours], ours)
        return [row_of("reference loop", a), row_of("gptforge", b, ratio_text(ratios, "ours/reference"))]

    def llama_fsdp(self) -> list[Row]:
        fsdp = [*self.sizes.llama, "strategy=fsdp", "strategy.activation_checkpointing=true"]
        compiled = [*fsdp, f"trainer.compile={self.sizes.compile}"]
        (a, b), ratios = self.pair(fsdp, compiled)
        return [
            row_of("Llama FSDP2 + AC", a),
            row_of("Llama FSDP2 + AC + compile", b, ratio_text(ratios, "compiled/eager")),
        ]

    def fp8(self) -> list[Row]:
        bf16 = [*self.sizes.llama, f"trainer.compile={self.sizes.compile}"]
        fp8 = [*bf16, "trainer.precision=fp8"]
        (a, b), ratios = self.pair(bf16, fp8, self.sizes.fp8_steps)
        gap = abs(b.runner.last_loss - a.runner.last_loss) / a.runner.last_loss
        result = f"{ratio_text(ratios, 'fp8/bf16')}; loss after the same steps differs by {gap:.2%}"
        return [row_of("Llama bf16", a), row_of("Llama fp8", b, result)]

    def loaders(self) -> list[Row]:
        from gptforge.benchmarks.data import loader_rates

        rows = []
        for name, rate in loader_rates(ROOT / "data" / "tinyshakespeare.txt", workers=2, **self.sizes.loader):
            versus = f"{rate / self.train_rate:.1f}x GPT-2's training rate above" if self.train_rate else ""
            rows.append(Row("loader", name, rate, result=versus))
        return rows

    def strategies(self) -> list[Row]:
        return [self.launch(name) for name in ("ddp", "fsdp", "deepspeed_zero2")]

    def launch(self, strategy: str) -> Row:
        run_dir = Path(tempfile.mkdtemp(dir=self.run_root)) / strategy
        steps = self.sizes.run_steps
        overrides = [*self.sizes.run, f"strategy={strategy}", f"trainer.max_steps={steps}"]
        overrides += [f"trainer.checkpoint_every={steps // 2}", "trainer.eval_every=0", "trainer.log_every=1"]
        overrides += ["trainer.sample_tokens=0", "scheduler.warmup_steps=1", f"out_dir={run_dir}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHELASTIC", "RANK", "LOCAL_"))}
        for key in ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK", "ROLE_RANK"):
            env.pop(key, None)
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
        started = time.perf_counter()
        done = subprocess.run(
            [*launcher, str(ROOT / "scripts" / "train.py"), *overrides],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        seconds = time.perf_counter() - started
        config = shlex.join([f"strategy={strategy}", "torchrun --nproc_per_node=1"])
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or ["no output"]
            last = next((line for line in lines if line.startswith("error:")), lines[-1])
            return Row(f"{strategy} run", config, result=f"failed (exit {done.returncode}): {last[:200]}")
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        rate = [r["tokens_per_sec"] for r in records if "tokens_per_sec" in r][-1]
        saved = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
        return Row(
            f"{strategy} run",
            config,
            rate,
            result=f"{steps} steps, saved {', '.join(saved)} ({seconds:.0f} s)",
        )

    def environment(self) -> str:
        from gptforge.trainer.metrics import peak_flops_per_sec

        device = torch.device(self.device)
        gpu = torch.cuda.get_device_name(device) if self.device == "cuda" else "none (CPU)"
        peak = peak_flops_per_sec(device)
        peak_text = f"{peak / 1e12:.0f} TFLOP/s dense bf16" if peak else "none (MFU not reported)"
        cuda = torch.version.cuda or "none"
        return f"torch {torch.__version__}, CUDA {cuda}, GPU {gpu}, MFU peak {peak_text}"


def run_check(args: argparse.Namespace) -> None:
    sizes = TINY if args.tiny else FULL
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device: the GPU check needs one; --tiny runs it on a CPU")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gptforge-gpu-check-") as tmp:
        check = Check(sizes, Path(tmp))
        check.attempt("GPT-2 compile", "trainer.compile=true", check.gpt2_compile)
        check.attempt("reference loop", "reference", check.reference)
        check.attempt("Llama FSDP2", "strategy=fsdp", check.llama_fsdp)
        check.attempt("Llama fp8", "trainer.precision=fp8", check.fp8)
        check.attempt("loaders", "benchmark.py data", check.loaders)
        check.attempt("strategies", "torchrun --nproc_per_node=1", check.strategies)
    lines = [
        f"GPU check, {time.strftime('%Y-%m-%d')}: {check.environment()}",
        f"{sizes.rounds} rounds x {sizes.steps} steps per config after {sizes.warmup} warm-up steps, "
        f"synthetic batches, alternating; total {time.perf_counter() - started:.0f} s"
        + ("; --tiny: nothing is compiled, the figures mean nothing" if args.tiny else ""),
        f"GPT-2 settings: `{shlex.join(sizes.gpt2)}`",
        f"Llama settings: `{shlex.join(sizes.llama)}`",
        "",
        "| check | config | tokens/s | MFU | peak mem GiB | result |",
        "| --- | --- | --- | --- | --- | --- |",
        *(row.markdown() for row in check.rows),
    ]
    table = "\n".join(lines)
    print(table, flush=True)
    Path(args.out).write_text(table + "\n", encoding="utf-8")
    print(f"written to {args.out}")


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    gpu = commands.add_parser(
        "gpu", help="the one-command GPU check, one markdown table", formatter_class=HelpFormatter
    )
    gpu.add_argument(
        "--tiny", action="store_true", help="tiny models on a CPU: every path runs, figures don't count"
    )
    gpu.add_argument("--out", default="gpu_check.md", help="where the table is written too")
    gpu.set_defaults(run=run_check)
    return gpu
