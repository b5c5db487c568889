"""Benchmarks, one subcommand each: `train` (training throughput) and `data` (loader throughput).

    python scripts/benchmark.py train experiment=shakespeare_char_cpu --steps 200
    python scripts/benchmark.py train --compare reference "experiment=shakespeare_char_cpu"
    python scripts/benchmark.py train --compare "" "trainer.compile=true"
    python scripts/benchmark.py data --corpus data/tinyshakespeare.txt --workers 2

`train` builds the real trainer from Hydra overrides (composed as scripts/train.py composes them), runs
warm-up steps (excluded: compilation, allocator and cache warm-up), then times rounds of steps and prints
tokens/s, step time, MFU and peak memory. Evaluation and checkpoints are off: the figures are training
alone. `--compare A B` builds both once and alternates them (A B, B A, A B, ...), so that a machine whose
speed drifts or is shared still gives a trustworthy ratio B/A. `reference [overrides]` in place of a
trainer's overrides is a plain PyTorch loop in nanoGPT's style on the same hyperparameters: the yardstick.

`data` writes a synthetic corpus of --copies x the corpus into a temp directory, trains a BPE on it,
prepares shards, then times each loader's micro-batches (excluding start-up) and prints one line per path.
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gptforge.cli import HelpFormatter, run_cli
from gptforge.config import Config, DataConfig, TokenizerConfig

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "reference"  # in place of a config's overrides: the plain PyTorch loop


TRAINER_DEFAULTS = {  # the benchmark times training alone, in a fresh run directory
    "trainer.eval_every": "0",
    "trainer.checkpoint_every": "0",
    "trainer.resume": "never",
    "trainer.sample_tokens": "0",
}


def compose_config(overrides: list[str]) -> Config:
    """The validated `Config` that `scripts/train.py <overrides>` would run."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from gptforge.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # what @hydra.main does: lets ${hydra:...} resolve
        with open_dict(cfg):
            del cfg["hydra"]
        return OmegaConf.to_object(cfg)


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
        cfg = compose_config([*overrides, *defaults, *out_dir])
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


# --- the yardstick: a plain PyTorch GPT and loop in the style of nanoGPT's model.py and train.py ---


@dataclass
class ReferenceConfig:
    block_size: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float
    bias: bool
    tie_embeddings: bool


class ReferenceLayerNorm(nn.Module):
    """LayerNorm with an optional bias, as nanoGPT writes it."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class ReferenceAttention(nn.Module):
    def __init__(self, cfg: ReferenceConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class ReferenceMLP(nn.Module):
    def __init__(self, cfg: ReferenceConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class ReferenceBlock(nn.Module):
    def __init__(self, cfg: ReferenceConfig) -> None:
        super().__init__()
        self.ln_1 = ReferenceLayerNorm(cfg.n_embd, cfg.bias)
        self.attn = ReferenceAttention(cfg)
        self.ln_2 = ReferenceLayerNorm(cfg.n_embd, cfg.bias)
        self.mlp = ReferenceMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class ReferenceGPT(nn.Module):
    """nanoGPT's GPT: learned positions, pre-norm blocks, forward returns (logits, loss)."""

    def __init__(self, cfg: ReferenceConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(cfg.vocab_size, cfg.n_embd),
                "wpe": nn.Embedding(cfg.block_size, cfg.n_embd),
                "drop": nn.Dropout(cfg.dropout),
                "h": nn.ModuleList(ReferenceBlock(cfg) for _ in range(cfg.n_layer)),
                "ln_f": ReferenceLayerNorm(cfg.n_embd, cfg.bias),
            }
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def configure_optimizers(self, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.optim.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        extra = {"fused": True} if device.type == "cuda" else {}  # nanoGPT: fused only on CUDA
        return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), **extra)

    def flops_per_token(self) -> int:
        """The trainer's convention: 6 * (non-embedding params + output head) + 12 * L * C * T."""
        cfg = self.cfg
        n = sum(p.numel() for p in self.parameters()) - self.transformer.wpe.weight.numel()
        if not cfg.tie_embeddings:
            n -= self.transformer.wte.weight.numel()
        return 6 * n + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size


class ReferenceRunner:
    """nanoGPT's train.py loop on the hyperparameters of the composed config (model, batch, AdamW, lr)."""

    log_interval = 10  # nanoGPT's shakespeare_char config: loss.item() every 10 iterations

    def __init__(self, overrides: list[str], synthetic: bool) -> None:
        from gptforge.data.corpus import read_text
        from gptforge.trainer.devices import resolve_device, resolve_precision
        from gptforge.trainer.metrics import peak_flops_per_sec

        cfg = compose_config(overrides)
        parts = cfg.model.components
        gpt2_components = (parts.norm, parts.mlp, parts.position) == ("layernorm", "gelu", "learned")
        if cfg.data.source != "text_file" or cfg.tokenizer.name != "char" or not gpt2_components:
            raise SystemExit(
                "error: reference runs gpt2-flavour models on data=shakespeare_char (char tokens)"
            )
        if cfg.trainer.threads:
            torch.set_num_threads(cfg.trainer.threads)
        self.cfg = cfg
        self.device = resolve_device(cfg.trainer.device)
        text = read_text(cfg.data.path)
        chars = sorted(set(text))
        stoi = {ch: i for i, ch in enumerate(chars)}
        split = int(len(text) * (1.0 - cfg.data.val_fraction))
        self.train_data = np.array([stoi[c] for c in text[:split]], dtype=np.uint16)
        self.vocab_size = len(chars)
        self.synthetic = synthetic
        self.batch_size, self.block_size = cfg.trainer.micro_batch_size, cfg.model.block_size
        model_cfg = ReferenceConfig(
            block_size=cfg.model.block_size,
            vocab_size=len(chars),
            n_layer=cfg.model.n_layer,
            n_head=cfg.model.n_head,
            n_embd=cfg.model.n_embd,
            dropout=cfg.model.dropout,
            bias=cfg.model.components.bias,
            tie_embeddings=cfg.model.tie_embeddings,
        )
        torch.manual_seed(cfg.seed)
        self.model = ReferenceGPT(model_cfg).to(self.device)
        self.optimizer = self.model.configure_optimizers(cfg, self.device)
        self.train_model = torch.compile(self.model) if cfg.trainer.compile else self.model
        dtype = resolve_precision(cfg.trainer.precision, self.device)
        self.precision = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[dtype]
        # nanoGPT autocasts on CUDA only; with fp16 it would also need a GradScaler
        self.autocast = (
            torch.autocast(self.device.type, dtype=dtype) if dtype and self.device.type == "cuda" else None
        )
        self.is_main, self.world_size = True, 1
        self.tokens_per_step = self.batch_size * self.block_size
        self.flops_per_token = self.model.flops_per_token()
        self.peak_flops_per_sec = peak_flops_per_sec(self.device, cfg.trainer.peak_flops_per_sec)
        self.iter_num = 0
        self.last_loss: float | None = None
        self.x, self.y = self.get_batch()

    def get_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.synthetic:
            x = torch.randint(0, self.vocab_size, (self.batch_size, self.block_size))
            y = torch.roll(x, -1, dims=1)
        else:
            data, T = self.train_data, self.block_size
            ix = torch.randint(len(data) - T, (self.batch_size,))
            x = torch.stack([torch.from_numpy(data[i : i + T].astype(np.int64)) for i in ix])
            y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + T].astype(np.int64)) for i in ix])
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(
                self.device, non_blocking=True
            )
        return x, y

    def get_lr(self, it: int) -> float:
        cfg = self.cfg
        warmup, decay_iters, lr, min_lr = (
            cfg.scheduler.warmup_steps,
            cfg.trainer.max_steps,
            cfg.optim.lr,
            cfg.scheduler.min_lr_ratio * cfg.optim.lr,
        )
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        if it > decay_iters:
            return min_lr
        coeff = 0.5 * (1.0 + math.cos(math.pi * (it - warmup) / (decay_iters - warmup)))
        return min_lr + coeff * (lr - min_lr)

    def step(self) -> None:
        lr = self.get_lr(self.iter_num)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.autocast is None:
            _, loss = self.train_model(self.x, self.y)
        else:
            with self.autocast:
                _, loss = self.train_model(self.x, self.y)
        self.x, self.y = self.get_batch()  # the next batch, while the GPU works on this one
        loss.backward()
        if self.cfg.trainer.grad_clip != 0.0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.trainer.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.iter_num % self.log_interval == 0:
            self.last_loss = loss.item()
        self.iter_num += 1

    def close(self) -> None:
        return None


# --- timing ---


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


def bench_train(args: argparse.Namespace) -> None:
    specs = args.compare if args.compare else [shlex.join(args.overrides)]
    synthetic = args.data == "synthetic"
    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="gptforge-bench-") as tmp:
        configs = [
            build_runner(spec, Path(tmp) / f"config_{i}", synthetic, default_threads)
            for i, spec in enumerate(specs)
        ]
        try:
            for measured in configs:  # compile, allocator and cache warm-up: not throughput
                measured.warmup_s = run_steps(measured, args.warmup_steps)
            ratios = []
            for round_index in range(args.rounds):
                # A B, then B A: a machine that speeds up or slows down during the run favours neither
                order = configs if round_index % 2 == 0 else configs[::-1]
                seconds = {id(m): run_steps(m, args.steps) for m in order}
                for measured in configs:
                    rate = args.steps * measured.runner.tokens_per_step / seconds[id(measured)]
                    measured.tokens_per_sec.append(rate)
                if len(configs) == 2:
                    ratios.append(configs[1].tokens_per_sec[-1] / configs[0].tokens_per_sec[-1])
            if configs[0].runner.is_main:
                print_results(args, configs, ratios, synthetic)
        finally:
            for measured in configs:
                measured.runner.close()


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


def _time_loader(loader, tokens_per_batch: int, seconds: float) -> float:
    next(loader)  # start-up (workers, first chunk) is not throughput
    start, n_batches = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        next(loader)
        n_batches += 1
    return n_batches * tokens_per_batch / (time.perf_counter() - start)


def _write_corpus(corpus: Path, copies: int, out: Path) -> Path:
    text = corpus.read_text(encoding="utf-8")
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    out.mkdir()
    per_file = max(1, len(paragraphs) // 4)
    for copy in range(copies):
        for part in range(0, len(paragraphs), per_file):
            docs = [f"[{copy}] {p}" for p in paragraphs[part : part + per_file]]
            (out / f"c{copy:03d}_{part:06d}.txt").write_text("\n\n".join(docs), encoding="utf-8")
    return out


def bench_data(args: argparse.Namespace) -> None:
    from gptforge.data import BatchLayout, build_data, build_tokenizer
    from gptforge.data.bpe import BPETokenizer, train_bpe
    from gptforge.data.prepare import prepare_shards
    from gptforge.data.sources import TextOptions, open_local

    layout = BatchLayout(block_size=args.block_size, micro_batch_size=args.micro_batch_size)
    tokens_per_batch = args.block_size * args.micro_batch_size
    with tempfile.TemporaryDirectory() as tmp:
        corpus = _write_corpus(Path(args.corpus), args.copies, Path(tmp) / "corpus")
        source = open_local(str(corpus), TextOptions(text_unit="paragraph"))
        texts = (t for u in range(min(source.n_units, 8)) for t in source.documents(u))
        bpe = BPETokenizer(train_bpe(texts, args.vocab_size, ["<|endoftext|>"]), "<|endoftext|>")
        bpe_dir = Path(tmp) / "bpe"
        bpe_dir.mkdir()
        bpe.save(bpe_dir)
        prepared = Path(tmp) / "prepared"
        prepare_shards(source, bpe, prepared, workers=args.workers, progress=False)
        tokenizer_cfg = TokenizerConfig(name="bpe", path=str(bpe_dir / "tokenizer.json"))
        tokenizer = build_tokenizer(tokenizer_cfg)

        runs = [("memmap random windows", DataConfig(source="memmap", path=str(prepared), val_fraction=0.0))]
        seq = DataConfig(source="memmap", path=str(prepared), val_fraction=0.0, sampling="sequential")
        runs.append(("memmap sequential windows", seq))
        for workers in sorted({0, args.workers}):
            stream = DataConfig(
                source="local", path=str(corpus), text_unit="paragraph", val_fraction=0.0, num_workers=workers
            )
            runs.append((f"streaming + BPE + packing, {workers} workers", stream))
        # before any loader: workers turn tokenizers' own threads off in this process
        encode_texts = [t for u in range(min(source.n_units, 8)) for t in source.documents(u)]
        start = time.perf_counter()
        n_tokens = sum(len(ids) for ids in tokenizer.encode_batch(encode_texts))
        encode_rate = n_tokens / (time.perf_counter() - start)
        print(
            f"corpus: {source.n_units} files, BPE vocab {tokenizer.vocab_size}, T={args.block_size}, "
            f"B={args.micro_batch_size}"
        )
        for name, cfg in runs:
            loader, _ = build_data(cfg, tokenizer, layout)
            rate = _time_loader(loader, tokens_per_batch, args.seconds)
            print(f"{name:40s} {rate / 1e6:8.2f}M tokens/s")
            if hasattr(loader, "close"):
                loader.close()
        print(f"{'HF tokenizers encode_batch alone':40s} {encode_rate / 1e6:8.2f}M tokens/s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

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

    data = commands.add_parser(
        "data", help="data loader throughput per path (tokens/s)", formatter_class=HelpFormatter
    )
    data.add_argument(
        "--corpus", default="data/tinyshakespeare.txt", help="UTF-8 text to build the corpus from"
    )
    data.add_argument("--copies", type=int, default=8, help="copies of the corpus (each with distinct text)")
    data.add_argument("--workers", type=int, default=2, help="DataLoader workers for the streaming path")
    data.add_argument("--block-size", type=int, default=1024, help="T, tokens per sequence")
    data.add_argument("--micro-batch-size", type=int, default=16, help="B, sequences per batch")
    data.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary trained for the run")
    data.add_argument("--seconds", type=float, default=5.0, help="timed seconds per path")
    data.set_defaults(run=bench_data)
    args = parser.parse_args(argv)
    if args.command == "train" and args.compare and args.overrides:
        parser.error("give overrides either positionally (one config) or in --compare A B, not both")
    args.run(args)


if __name__ == "__main__":
    run_cli(main)
