"""Typed schemas for every config group, registered in Hydra's ConfigStore.

Hydra composes `configs/` on top of `Config`, so an unknown key or a value of the wrong type fails
at start-up with the key's full name. Checks that need more than a type (ranges, divisibility,
names from a fixed set) live in `__post_init__` and in `validate()`, and raise `ConfigError`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from gptforge.errors import ConfigError


def _choice(key: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(valid)}")


def _positive(key: str, value: float | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if not (value >= 0 if allow_zero else value > 0):  # NaN fails both
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key}={value} is not valid; it must be {bound}")


def _finite_numbers(node: object, prefix: str) -> None:
    """ConfigError for the first float field of `node` (or float in a list field) that is NaN or infinite:
    torch would take them and train to NaN weights, or fail deep inside."""
    for item in fields(node):
        value = getattr(node, item.name)
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ConfigError(f"{prefix}.{item.name}={value} is not valid; it must be a finite number")


# the components of a block, each a name the model builds (gptforge.models.layers) and HF conversion reads
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu", "relu2")
POSITIONS = ("learned", "rope")
# a flavour is a preset of component choices: what the fields left at None become
FLAVOURS = {
    "gpt2": {"norm": "layernorm", "mlp": "gelu", "position": "learned", "bias": True},
    "llama": {"norm": "rmsnorm", "mlp": "swiglu", "position": "rope", "bias": False},
}


@dataclass
class LoraConfig:
    """LoRA adapters on the named linear layers; rank 0 trains the whole model as usual."""

    rank: int = 0  # adapter rank r; 0 turns LoRA off
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # dropout on the adapter's input
    # linear layers to adapt, by name or dotted suffix: attn.qkv, attn.proj, mlp.fc, mlp.gate, mlp.up,
    # mlp.proj, lm_head ("proj" alone matches attn.proj and mlp.proj)
    target_modules: list[str] = field(default_factory=lambda: ["attn.qkv", "attn.proj"])

    def __post_init__(self) -> None:
        _finite_numbers(self, "model.lora")
        _positive("model.lora.rank", self.rank, allow_zero=True)
        _positive("model.lora.alpha", self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.lora.dropout={self.dropout} is not valid; it must be in [0, 1)")
        if self.rank and not self.target_modules:
            raise ConfigError("model.lora.target_modules is empty; name the linear layers to adapt")


@dataclass(frozen=True)
class Components:
    """What a block is made of: `ModelConfig.components`, the flavour's preset with the fields set over it."""

    norm: str
    mlp: str
    position: str
    bias: bool


@dataclass
class ModelConfig:
    """A GPT decoder: `flavour` picks the defaults of the component fields (norm, mlp, position, bias),
    gpt2 (LayerNorm, GELU, learned positions, biases) or llama (RMSNorm, SwiGLU, RoPE, no biases)."""

    flavour: str = "gpt2"  # gpt2 | llama: a preset of the component choices below
    norm: str | None = None  # layernorm | rmsnorm; None: the flavour's
    # gelu (tanh approximation, GPT-2's) | swiglu (gated SiLU) | relu2 (ReLU squared, modded-nanogpt's);
    # None: the flavour's
    mlp: str | None = None
    position: str | None = None  # learned (embedding table) | rope (rotary); None: the flavour's
    bias: bool | None = None  # biases in linear layers and norms; None: the flavour's
    vocab_size: int | None = None  # None: follow the tokenizer (rounded up to vocab_multiple)
    vocab_multiple: int = (
        1  # pad the vocabulary to a multiple of this (64 keeps matmuls tensor-core friendly)
    )
    block_size: int = 256  # context length in tokens
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # None: n_head (multi-head); fewer: grouped-query attention
    n_embd: int = 128
    intermediate_size: int | None = None  # MLP hidden size; None: 4*n_embd (gelu), ~8/3*n_embd (swiglu)
    dropout: float = 0.0
    tie_embeddings: bool = True  # share the token embedding with the output head
    rope_theta: float = 10000.0  # RoPE base (position=rope)
    norm_eps: float = 1e-5
    init_std: float = 0.02  # residual projections use init_std / sqrt(2 * n_layer) (GPT-2 scaled init)
    lora: LoraConfig = field(default_factory=LoraConfig)  # adapters for fine-tuning; see models/lora.py
    # speedrun switches (docs/PERFORMANCE.md has what each buys); all off by default
    qk_norm: bool = False  # RMSNorm on q and k of every head before attention (modded-nanogpt, OLMo 2)
    logit_softcap: float = 0.0  # logits = cap * tanh(logits / cap) (Gemma 2); 0: off
    zero_init_proj: bool = False  # output projections of attention and MLP start at zero (modded-nanogpt)
    z_loss: float = 0.0  # adds this * mean(logsumexp(logits)^2) to the training gradient (PaLM); 0: off
    doc_mask: bool = False  # attend only within each document of a packed block (documents end at EOS)
    eos_id: int | None = None  # doc_mask: the EOS token id; None: the tokenizer's, set when the run plans

    def __post_init__(self) -> None:
        _finite_numbers(self, "model")
        _choice("model.flavour", self.flavour, tuple(FLAVOURS))
        components = self.components
        _choice("model.norm", components.norm, NORMS)
        _choice("model.mlp", components.mlp, MLPS)
        _choice("model.position", components.position, POSITIONS)
        for key in ("block_size", "n_layer", "n_head", "n_embd", "vocab_multiple"):
            _positive(f"model.{key}", getattr(self, key))
        _positive("model.vocab_size", self.vocab_size)
        _positive("model.n_kv_head", self.n_kv_head)
        _positive("model.intermediate_size", self.intermediate_size)
        for key in ("rope_theta", "norm_eps", "init_std"):
            _positive(f"model.{key}", getattr(self, key))
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}; "
                "pick n_embd as a multiple of n_head"
            )
        if self.n_kv_head is not None and self.n_head % self.n_kv_head:
            raise ConfigError(
                f"model.n_head={self.n_head} is not divisible by model.n_kv_head={self.n_kv_head}; "
                "n_kv_head must divide n_head"
            )
        if components.position == "rope" and self.head_dim % 2:
            raise ConfigError(
                f"model.position=rope needs an even head size; n_embd / n_head = {self.head_dim}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} is not valid; it must be in [0, 1)")
        _positive("model.logit_softcap", self.logit_softcap, allow_zero=True)
        _positive("model.z_loss", self.z_loss, allow_zero=True)
        _positive("model.eos_id", self.eos_id, allow_zero=True)

    @property
    def components(self) -> Components:
        """The component choices in effect: each field set, else the flavour's (what the model builds)."""
        preset = FLAVOURS[self.flavour]
        return Components(
            **{name: preset[name] if getattr(self, name) is None else getattr(self, name) for name in preset}
        )

    def with_eos(self, eos_id: int) -> ModelConfig:
        """This config with `eos_id` filled in where `doc_mask` needs it and it is not set."""
        return replace(self, eos_id=eos_id) if self.doc_mask and self.eos_id is None else self

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def mlp_hidden_size(self) -> int:
        """intermediate_size, else 4 * n_embd, or 8/3 * n_embd rounded up to 64 for a gated MLP (the
        parameter count of a 4x GELU MLP, in matmul-friendly sizes)."""
        if self.intermediate_size:
            return self.intermediate_size
        if self.components.mlp == "swiglu":
            return 64 * -(-8 * self.n_embd // (3 * 64))
        return 4 * self.n_embd


@dataclass
class TokenizerConfig:
    """How text becomes token ids; see gptforge.data.tokenizers."""

    name: str = "char"
    path: str | None = None  # bpe: tokenizer.json to load; gpt2: local GPT-2 .tiktoken file (offline use)
    vocab_size: int = 8192  # bpe training (scripts/train_tokenizer.py): target vocabulary size in tokens
    eos_token: str = "<|endoftext|>"  # separates documents in packed blocks

    def __post_init__(self) -> None:
        _finite_numbers(self, "tokenizer")
        from gptforge.data.tokenizers import TOKENIZERS  # the registry (and the names) of gptforge.data

        _choice("tokenizer.name", self.name, tuple(TOKENIZERS))
        _positive("tokenizer.vocab_size", self.vocab_size)


TEXT_FORMATS = ("auto", "text", "json", "parquet")
TEXT_UNITS = ("document", "paragraph", "line")
ENCODING_ERRORS = ("strict", "replace")
WINDOW_SAMPLING = ("random", "sequential")


@dataclass
class MixtureSourceConfig:
    """One source of `data=mixture`: local files (`path`) or a hub dataset (`name`), and its weight."""

    path: str | None = None  # file, directory or glob of .txt/.jsonl/.json/.parquet
    name: str | None = None  # hub dataset name (instead of path)
    weight: float = 1.0  # share of training blocks; weights are normalised over the sources

    def __post_init__(self) -> None:
        _finite_numbers(self, "data.sources")
        if (self.path is None) == (self.name is None):
            raise ConfigError("data.sources: give each source exactly one of path or name")
        _positive("data.sources.weight", self.weight)


@dataclass
class DataConfig:
    """Where training and validation tokens come from; see gptforge.data and docs/DATA.md."""

    source: str = "text_file"
    path: str | None = "data/tinyshakespeare.txt"  # file, directory or glob; memmap: prepared shard dir
    val_path: str | None = None  # None: hold out val_fraction of path
    val_fraction: float = 0.1  # text_file/memmap: last fraction of the tokens; streaming: of the documents
    num_workers: int = 0  # DataLoader worker processes per rank
    name: str | None = None  # hf_hub: dataset name on the hub (or a local dataset directory)
    split: str = "train"  # hf_hub: split to train on
    val_split: str | None = None  # hf_hub: split to validate on; None: val_fraction of the documents
    text_format: str = "auto"  # auto (by file extension), text, json (JSON Lines) or parquet
    text_field: str = "text"  # json/parquet/hub: the column holding each document's text
    prompt_field: str = "prompt"  # sft: the field holding each example's prompt (context, no loss)
    response_field: str = "response"  # sft: the field holding its response (learned, then EOS)
    messages_field: str | None = None  # sft: a field of OpenAI-style messages, read instead of the two above
    # .txt (and text_suffixes) files: paragraph (blank-line separated blocks, the default everywhere: a
    # single-file corpus still has documents to hold out), document (one per file: source code) or line
    text_unit: str = "paragraph"
    text_suffixes: list[str] = field(default_factory=list)  # more file suffixes read as text, e.g. [.py,.c]
    encoding_errors: str = "strict"  # strict: non-UTF-8 text is an error; replace: decode it with U+FFFD
    shuffle_blocks: int = 1024  # blocks (sequences) shuffled together per stream; 0: no shuffling
    tokenize_batch: int = 256  # documents per batched tokenizer call
    sampling: str = "random"  # memmap: random windows or sequential windows
    sources: list[MixtureSourceConfig] = field(default_factory=list)  # mixture: the weighted sources

    def __post_init__(self) -> None:
        _finite_numbers(self, "data")
        from gptforge.data.pipeline import DATA_SOURCES  # the registry (and the names) of gptforge.data

        _choice("data.source", self.source, tuple(DATA_SOURCES))
        source = DATA_SOURCES[self.source]
        _choice("data.text_format", self.text_format, TEXT_FORMATS)
        _choice("data.text_unit", self.text_unit, TEXT_UNITS)
        _choice("data.encoding_errors", self.encoding_errors, ENCODING_ERRORS)
        _choice("data.sampling", self.sampling, WINDOW_SAMPLING)
        if self.path is None and source.needs_path:
            raise ConfigError(
                f"data.path is not set; data.source={self.source} reads your corpus from it: give a file, a "
                "directory or a glob (memmap: the directory scripts/prepare_data.py wrote)"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={self.val_fraction} is not valid; it must be in [0, 1)")
        _positive("data.num_workers", self.num_workers, allow_zero=True)
        _positive("data.shuffle_blocks", self.shuffle_blocks, allow_zero=True)
        _positive("data.tokenize_batch", self.tokenize_batch)
        for suffix in self.text_suffixes:
            if not suffix.startswith(".") or len(suffix) < 2:
                raise ConfigError(
                    f"data.text_suffixes: {suffix!r} is not a file suffix; "
                    "write them with the dot, e.g. [.py,.c]"
                )
        source.check(self)
        if self.prompt_field == self.response_field:
            raise ConfigError(
                f"data.prompt_field and data.response_field are both {self.prompt_field!r}; name two fields"
            )


OPTIMIZERS = ("adamw", "muon")


@dataclass
class OptimConfig:
    """AdamW, or Muon for the hidden matrices with AdamW for the rest (`muon`); no weight decay on norms,
    biases and embeddings."""

    name: str = "adamw"  # adamw | muon (torch.optim.Muon on the blocks' matrices, AdamW on the rest)
    lr: float = 1e-3  # peak learning rate, reached at the end of warm-up (AdamW's groups)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    fused: bool | None = None  # None: fused kernel on CUDA, foreach elsewhere
    muon_lr: float = 0.02  # muon: peak learning rate of the Muon matrices (scheduled like lr)
    muon_momentum: float = 0.95  # muon: Nesterov momentum
    muon_weight_decay: float = 0.0  # muon: decoupled weight decay of the Muon matrices

    def __post_init__(self) -> None:
        _finite_numbers(self, "optim")
        _choice("optim.name", self.name, OPTIMIZERS)
        _positive("optim.lr", self.lr)
        _positive("optim.muon_lr", self.muon_lr)
        _positive("optim.muon_weight_decay", self.muon_weight_decay, allow_zero=True)
        if not 0.0 <= self.muon_momentum < 1.0:
            raise ConfigError(f"optim.muon_momentum={self.muon_momentum} is not valid; it must be in [0, 1)")
        _positive("optim.weight_decay", self.weight_decay, allow_zero=True)
        _positive("optim.eps", self.eps)  # 0 divides by zero where a gradient is zero: NaN weights
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas={list(self.betas)} is not valid; give two values in [0, 1)")


SCHEDULER_NAMES = ("cosine", "linear", "wsd", "constant")


@dataclass
class SchedulerConfig:
    """Learning rate against step: linear warm-up, then the named decay down to min_lr_ratio * optim.lr."""

    name: str = "cosine"
    warmup_steps: int = 100  # optimizer steps of linear warm-up from 0 to optim.lr
    # the floor as a fraction of the peak, so a sweep over optim.lr keeps every run's decay a decay
    min_lr_ratio: float = 0.1
    decay_steps: int | None = None  # step at which the decay ends; None: trainer.max_steps
    wsd_decay_fraction: float = 0.2  # wsd: the last fraction of steps that decays (the rest is flat)

    def __post_init__(self) -> None:
        _finite_numbers(self, "scheduler")
        _choice("scheduler.name", self.name, SCHEDULER_NAMES)
        _positive("scheduler.warmup_steps", self.warmup_steps, allow_zero=True)
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(
                f"scheduler.min_lr_ratio={self.min_lr_ratio} is not valid; it is the floor as a fraction of "
                "optim.lr, in [0, 1] (a floor above the peak would make the decay rise)"
            )
        _positive("scheduler.decay_steps", self.decay_steps)
        if not 0.0 < self.wsd_decay_fraction <= 1.0:
            raise ConfigError(
                f"scheduler.wsd_decay_fraction={self.wsd_decay_fraction} is not valid; it must be in (0, 1]"
            )


@dataclass
class StrategyConfig:
    """How the model is spread over processes; see gptforge.trainer.strategies."""

    name: str = "auto"  # auto: single for one process, ddp for several
    backend: str = "auto"  # process group backend: auto (nccl on CUDA, gloo on CPU), nccl, gloo
    timeout_s: int = 600  # a collective that takes longer than this fails instead of hanging
    zero_stage: int | None = None  # deepspeed only: ZeRO stage 1, 2 or 3
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    reshard_after_forward: bool = True  # fsdp: free gathered weights after forward (False: keep, ZeRO-2-like)
    # the device mesh: dp_replicate x dp_shard x tp x pp ranks = the world size (see strategies/mesh.py)
    dp_replicate: int = 1  # data-parallel replicas (fsdp: >1 is HSDP, shards replicated across groups)
    dp_shard: int = -1  # data-parallel ranks that shard the weights; -1: the world size over the others
    tp: int = 1  # tensor-parallel ranks (fsdp): heads and MLP columns split, norms sequence-parallel
    pp: int = 1  # pipeline stages (fsdp): each rank of a pipeline keeps a contiguous run of blocks
    pp_schedule: str = "1F1B"  # pp: a single-stage schedule of torch.distributed.pipelining (1F1B, GPipe)
    loss_parallel: bool = False  # tp: cross-entropy on vocabulary-sharded logits (never gathers them whole)
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific keys passed through unchanged

    def __post_init__(self) -> None:
        _finite_numbers(self, "strategy")
        from gptforge.trainer.strategies import STRATEGIES  # the registry: a light module

        _choice("strategy.name", self.name, ("auto", *STRATEGIES))
        _choice("strategy.backend", self.backend, ("auto", "nccl", "gloo"))
        _positive("strategy.timeout_s", self.timeout_s)
        for key in ("dp_replicate", "tp", "pp"):
            _positive(f"strategy.{key}", getattr(self, key))
        if self.dp_shard != -1 and self.dp_shard < 1:
            raise ConfigError(
                f"strategy.dp_shard={self.dp_shard} is not valid; it must be -1 (the ranks the other "
                "dimensions leave) or > 0"
            )


@dataclass
class ConsoleLoggerConfig:
    progress_bar: bool | None = None  # None: a bar on a terminal, one line per log step otherwise


@dataclass
class JsonlLoggerConfig:
    filename: str = "metrics.jsonl"  # inside the run directory


WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class WandbLoggerConfig:
    """Weights & Biases; a resumed run continues the same wandb run (its id is kept in the run directory)."""

    project: str = "gptforge"
    entity: str | None = None  # team or user; None: the default entity of the logged-in account
    mode: str = "online"  # online (needs a key), offline (local files, `wandb sync` later), disabled
    name: str | None = None  # wandb run name; None: the run's `name`
    tags: list[str] = field(default_factory=list)
    dir: str | None = None  # where wandb writes its files; None: the run directory

    def __post_init__(self) -> None:
        _finite_numbers(self, "logger.wandb")
        _choice("logger.wandb.mode", self.mode, WANDB_MODES)


@dataclass
class TensorboardLoggerConfig:
    subdir: str = "tensorboard"  # event files go into <run directory>/<subdir>


@dataclass
class LoggerConfig:
    """Each logger that is set (not null) receives every metric record."""

    console: ConsoleLoggerConfig | None = None
    jsonl: JsonlLoggerConfig | None = None
    wandb: WandbLoggerConfig | None = None
    tensorboard: TensorboardLoggerConfig | None = None


PRECISIONS = ("auto", "bf16", "fp16", "fp32", "fp8")  # fp8: float8 linears + bf16 (trainer/fp8.py)
RESUME_MODES = ("auto", "never")


@dataclass
class TrainerConfig:
    """The training loop: batch sizes, length, precision, evaluation, checkpointing, resume."""

    max_steps: int = 1000  # optimizer steps (unless max_tokens is set)
    max_tokens: float | None = None  # a token budget instead: max_steps = ceil(max_tokens / tokens per step)
    micro_batch_size: int = 12  # sequences per device per forward/backward
    global_batch_size: int | None = None  # sequences per optimizer step; None: micro_batch_size * world size
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    precision: str = "auto"  # auto: bf16 autocast where the device supports it, else fp32
    device: str = "auto"  # auto: cuda when present, else cpu
    compile: bool = False  # torch.compile the model
    log_every: int = 10  # steps between metric records
    eval_every: int = 250  # steps between evaluations; 0: only at the end (there is always a final one)
    eval_batches: int = 20  # micro-batches per evaluation
    checkpoint_every: int = 500  # steps between checkpoints; 0 saves only at the end
    keep_last: int = 3  # complete checkpoints kept on disk
    resume: str = "auto"  # auto: continue from the newest checkpoint in out_dir; never: start fresh
    overwrite: bool = False  # with resume=never, allow starting over in an out_dir that holds checkpoints
    sample_tokens: int = 0  # after training, print this many tokens sampled from the model
    threads: int | None = None  # CPU threads for torch; None: torch's default
    cpu_batch_threads: int = 1  # strategy=single on CPU: threads that each run a slice of every micro-batch
    nonfinite_policy: str = "skip"  # a non-finite gradient norm: skip the step, or stop with a checkpoint
    max_consecutive_skips: int = 5  # skip: stop (with a checkpoint) after this many skipped steps in a row
    spike_threshold: float = 0.0  # a loss above mean + this many std of the recent window is a spike; 0: off
    spike_window: int = 100  # steps in the loss-spike window
    spike_policy: str = "log"  # log: record spikes; skip: also skip their optimizer step
    peak_flops_per_sec: float | None = None  # per-device peak for MFU; None: the table for known GPUs
    init_from: str | None = None  # start from these weights (consolidated .safetensors or a checkpoint dir)
    profile: bool = False  # capture a torch.profiler trace of a few steps into <run directory>/profile
    profile_wait_steps: int = 5  # steps (after start or resume) before the profiler starts
    profile_warmup_steps: int = 1  # steps profiled but discarded (first-call overheads)
    profile_active_steps: int = 3  # steps recorded in the trace

    def __post_init__(self) -> None:
        _finite_numbers(self, "trainer")
        for key in ("max_steps", "micro_batch_size", "log_every", "eval_batches", "keep_last"):
            _positive(f"trainer.{key}", getattr(self, key))
        for key in ("grad_clip", "eval_every", "checkpoint_every", "sample_tokens"):
            _positive(f"trainer.{key}", getattr(self, key), allow_zero=True)
        _positive("trainer.global_batch_size", self.global_batch_size)
        _positive("trainer.max_tokens", self.max_tokens)
        _positive("trainer.peak_flops_per_sec", self.peak_flops_per_sec)
        _positive("trainer.threads", self.threads)
        _positive("trainer.cpu_batch_threads", self.cpu_batch_threads)
        _choice("trainer.precision", self.precision, PRECISIONS)
        _choice("trainer.device", self.device, ("auto", "cpu", "cuda"))
        _choice("trainer.resume", self.resume, RESUME_MODES)
        _choice("trainer.nonfinite_policy", self.nonfinite_policy, ("skip", "stop"))
        _choice("trainer.spike_policy", self.spike_policy, ("log", "skip"))
        _positive("trainer.max_consecutive_skips", self.max_consecutive_skips, allow_zero=True)
        _positive("trainer.spike_threshold", self.spike_threshold, allow_zero=True)
        _positive("trainer.spike_window", self.spike_window)
        _positive("trainer.profile_wait_steps", self.profile_wait_steps, allow_zero=True)
        _positive("trainer.profile_warmup_steps", self.profile_warmup_steps, allow_zero=True)
        _positive("trainer.profile_active_steps", self.profile_active_steps)


@dataclass
class EvalConfig:
    """Downstream tasks scored during training (gptforge.eval); docs/EVALUATION.md has the task format."""

    # task .yaml files, task data files (.jsonl/.parquet), hf:<dataset> (default fields) or sft_val
    # (the validation examples of this run's data=sft config)
    tasks: list[str] = field(default_factory=list)
    every: int = 0  # steps between task evaluations; 0: only at the end of training
    limit: int | None = None  # examples per task (its first N); None: all of them
    num_fewshot: int | None = None  # k-shot examples before every prompt; None: each task's own (default 0)
    fewshot_seed: int = 1234  # seeds the draw of the k-shot examples (the same draw on every rank and run)
    max_new_tokens: int | None = None  # generative tasks: tokens per answer; None: each task's own

    def __post_init__(self) -> None:
        _finite_numbers(self, "eval")
        _positive("eval.every", self.every, allow_zero=True)
        _positive("eval.limit", self.limit)
        _positive("eval.num_fewshot", self.num_fewshot, allow_zero=True)
        _positive("eval.max_new_tokens", self.max_new_tokens)


@dataclass
class Config:
    """A whole run; `configs/config.yaml` composes one of these."""

    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    name: str = "default"  # run name, used in the default out_dir
    out_dir: str = "runs/default"  # the run directory: config, metrics, checkpoints
    seed: int = 1337
    debug: bool = False  # show full tracebacks instead of one-line errors
    dry_run: bool = False  # compose and validate the config, print it, do not train

    def __post_init__(self) -> None:
        warmup = self.scheduler.warmup_steps
        steps_known = self.trainer.max_tokens is None  # else checked once tokens per step are known
        if steps_known and warmup >= self.trainer.max_steps and self.scheduler.name != "constant":
            raise ConfigError(
                f"scheduler.warmup_steps={warmup} is not shorter than trainer.max_steps="
                f"{self.trainer.max_steps}; the run would never leave warm-up"
            )
        if self.strategy.name != "auto":  # what the backend cannot run (auto: checked once resolved)
            from gptforge.trainer.strategies import strategy_class

            strategy_class(self.strategy.name).check(self)
        global_batch, micro_batch = self.trainer.global_batch_size, self.trainer.micro_batch_size
        if global_batch is not None and global_batch % micro_batch:
            raise ConfigError(
                f"trainer.global_batch_size={global_batch} is not a multiple of "
                f"trainer.micro_batch_size={micro_batch}"
            )


DATA_KEYS = ("data", "data.source", "data.path", "data.name", "data.sources")


def run_name(experiment: str, overrides: list[str], source: str, path: str, hub_name: str | None) -> str:
    """The experiment's name, plus the data when the command line chose other data than the experiment's,
    so that a run on your corpus never lands in (or is refused by) the demo's run directory."""
    keys = {override.split("=", 1)[0].lstrip("+~") for override in overrides}
    if not keys & set(DATA_KEYS):
        return experiment
    if source == "mixture":
        label = "mixture"
    elif source == "hf_hub" and hub_name:
        label = hub_name.rstrip("/").rsplit("/", 1)[-1]
    else:
        fixed = re.split(r"[*?\[]", path, maxsplit=1)[0].rstrip("/") or path  # a glob: the part before it
        label = Path(fixed).stem or Path(fixed).name
    return f"{experiment}-{label}" if label else experiment


def _run_name_of(*, _root_: Any) -> str:
    """`run_name` of the composed config: from its own `hydra` node while Hydra still holds one (a sweep
    resolving its directory), else from the running job's HydraConfig."""
    from hydra.core.hydra_config import HydraConfig

    hydra = _root_.hydra if "hydra" in _root_ else HydraConfig.get()
    data = _root_.data
    return run_name(
        hydra.runtime.choices.experiment, list(hydra.overrides.task), data.source, data.path, data.name
    )


def register_configs() -> None:
    """Register `Config` as the schema that `configs/config.yaml` extends, and the run-name resolver."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="gptforge_schema", node=Config)
    from gptforge.sweep import job_dirname

    OmegaConf.register_new_resolver("gptforge.run_name", _run_name_of, replace=True)
    OmegaConf.register_new_resolver(
        "gptforge.sweep_job", lambda overrides, num: job_dirname(list(overrides), num), replace=True
    )
