"""The memory plan against what is allocated: saved activations counted by autograd's hooks, and the
estimate against the measured peak of real CPU runs (one process, and FSDP over two torchrun ranks)."""

from __future__ import annotations

import copy
import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import ROOT, compose_config, run_script
from integration.launch_utils import check, env, torchrun_command

from gptforge.config import Config, ModelConfig
from gptforge.models import GPT
from gptforge.trainer.communication import estimate_communication
from gptforge.trainer.memory import (
    MemoryEstimate,
    ModelShapes,
    estimate_memory,
    saved_bytes_per_token_per_layer,
)
from gptforge.trainer.plan import RunPlan, World, plan_run
from gptforge.trainer.summary import plan_estimates

MIB = 2**20
RUN = [
    "experiment=smoke",
    "scheduler.warmup_steps=0",
    "trainer.eval_every=0",
    "trainer.eval_batches=1",
    "trainer.log_every=1",
    "trainer.checkpoint_every=0",
    "logger.console.progress_bar=false",
]
# a model of a few kilobytes: what the process holds besides its model (interpreter, torch, data, the
# modules a build and a step import) is this run's peak
TRIVIAL = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "trainer.micro_batch_size=1"]
# 10.6M parameters (170 MB of weights, gradients and AdamW) and 768 tokens a micro-batch, whose saved
# activations (113 MB) outweigh the gradients: checkpointing them changes the peak by a fifth
ACTIVATION_HEAVY = [
    "model.n_layer=6",
    "model.n_head=6",
    "model.n_embd=384",
    "model.block_size=64",
    "trainer.micro_batch_size=12",
]
# 25M parameters (400 MB of weights, gradients and AdamW) in 32 small blocks, so FSDP's gathered blocks
# are a small share; a micro-batch of 32 tokens
STATE_HEAVY = ["model.n_layer=32", "model.n_head=4", "model.n_embd=256", "trainer.micro_batch_size=1"]
# glibc keeps freed blocks for reuse, so peak RSS would also count memory the process had already freed;
# with a fixed mmap threshold every block over 64 KiB goes back to the system when freed, and peak RSS
# follows live memory, as CUDA's max_memory_allocated does
LIVE_MEMORY = {"MALLOC_MMAP_THRESHOLD_": "65536"}


class Measured:
    """The memory a run's first and last records logged (bytes; the largest over ranks)."""

    def __init__(self, run_dir: Path) -> None:
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in records if "loss" in r]
        self.peak = train[-1]["peak_memory_gib"] * 2**30
        self.before_build = train[0]["memory_before_build_gib"] * 2**30
        self.after_build = train[0]["peak_memory_after_build_gib"] * 2**30

    @property
    def net_peak(self) -> float:
        """The peak over what was in use before the build (the interpreter, torch, the data)."""
        return self.peak - self.before_build

    @property
    def build(self) -> float:
        """What the build added at its peak, over what was in use before it."""
        return self.after_build - self.before_build


def train_single(run_dir: Path, *overrides: str) -> Measured:
    result = run_script("train.py", *RUN, *overrides, f"out_dir={run_dir}", env=LIVE_MEMORY)
    assert result.returncode == 0, result.stderr[-3000:]
    return Measured(run_dir)


def train_fsdp(run_dir: Path, *overrides: str) -> Measured:
    command = torchrun_command([*RUN, "strategy=fsdp", *overrides, f"out_dir={run_dir}"])
    result = subprocess.run(
        command, cwd=ROOT, env=env(**LIVE_MEMORY), capture_output=True, text=True, timeout=300
    )
    check(result)
    return Measured(run_dir)


def planned(tmp_path: Path, overrides: list[str], world_size: int = 1) -> tuple[RunPlan, GPT]:
    """The plan of the run of `overrides` on `world_size` ranks, and its model on the meta device."""
    world = World(world_size=world_size, local_world_size=world_size)
    plan = plan_run(compose_config([*RUN, *overrides]), tmp_path / "planned", world)
    with torch.device("meta"):
        return plan, GPT(plan.cfg.model)


def estimate(tmp_path: Path, overrides: list[str], world_size: int = 1) -> MemoryEstimate:
    """The plan's estimate for the run of `overrides`, as its summary prints it (fp32 on CPU)."""
    return plan_estimates(*planned(tmp_path, overrides, world_size), "fp32")[0]


def figures(measured: float, planned: MemoryEstimate) -> str:
    return f"measured {measured / MIB:.1f} MiB, estimate {planned.total / MIB:.1f} MiB"


def within(estimate_bytes: float, measured_bytes: float, tolerance: float = 0.15) -> bool:
    return abs(estimate_bytes / measured_bytes - 1) <= tolerance


@pytest.fixture(scope="module")
def trivial_single(tmp_path_factory: pytest.TempPathFactory) -> Measured:
    return train_single(tmp_path_factory.mktemp("trivial") / "run", *TRIVIAL, "trainer.max_steps=2")


@pytest.mark.parametrize(
    ("flavour", "autocast"), [("gpt2", False), ("gpt2", True), ("llama", False), ("llama", True)]
)
def test_saved_activations_per_block_are_what_autograd_saves(flavour: str, autocast: bool) -> None:
    cfg = ModelConfig(
        flavour=flavour, vocab_size=96, block_size=80, n_layer=1, n_head=8, n_kv_head=2, n_embd=256
    )
    if flavour == "gpt2":
        cfg = replace(cfg, n_kv_head=None)  # GPT-2 has no grouped-query attention
    model, B, T = GPT(cfg), 3, 80
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        # weights and autocast's copies of them are not activations: the copies are sized (out, in)
        if storage.data_ptr() not in weights and tensor.dim() and tensor.shape[0] in (B, B * T):
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    x = torch.randn(B, T, cfg.n_embd, requires_grad=True)
    rope = (model.rope_cos[:T], model.rope_sin[:T]) if model.wpe is None else None
    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), hooks:
        model.blocks[0](x, rope)
    expected = saved_bytes_per_token_per_layer(cfg, 2 if autocast else 4, autocast)
    small = 4 * cfg.n_head + 4 * 4  # the attention's log-sum-exp, the norms' statistics: per token
    assert expected <= sum(saved.values()) / (B * T) <= 1.01 * expected + small


@pytest.mark.slow  # three CPU runs, two of 2 steps over 768 tokens
@pytest.mark.parametrize("checkpointing", [False, True])
def test_estimate_is_within_15_percent_of_a_measured_single_process_peak(
    checkpointing: bool, trivial_single: Measured, tmp_path: Path
) -> None:
    overrides = [*ACTIVATION_HEAVY, f"strategy.activation_checkpointing={str(checkpointing).lower()}"]
    # two steps: the second runs forward and backward with AdamW's state allocated
    run = train_single(tmp_path / "run", *overrides, "trainer.max_steps=2")
    measured = run.net_peak - trivial_single.net_peak
    planned = estimate(tmp_path, overrides)
    print(f"\nsingle, checkpointing={checkpointing}: {figures(measured, planned)}")  # docs/SCALING.md
    assert within(planned.total, measured), (planned.describe(), vars(run), vars(trivial_single))
    # the comparison can fail: an estimate that forgot the optimizer state, or counted the activations of
    # the other checkpointing setting, would be outside 15%
    other = f"strategy.activation_checkpointing={str(not checkpointing).lower()}"
    assert not within(planned.total - planned.optimizer, measured)
    assert not within(estimate(tmp_path, [*ACTIVATION_HEAVY, other]).total, measured)


@pytest.mark.multiprocess  # two FSDP runs over 2 torchrun ranks, one single-process run
def test_fsdp_over_two_ranks_builds_on_meta_and_needs_within_60_percent_of_one_process(
    trivial_single: Measured, tmp_path: Path
) -> None:
    one_step = "trainer.max_steps=1"  # AdamW's state is allocated in the first step, activations are small
    single = train_single(tmp_path / "single", *STATE_HEAVY, one_step)
    fsdp = train_fsdp(tmp_path / "fsdp", *STATE_HEAVY, one_step)
    trivial_fsdp = train_fsdp(tmp_path / "trivial_fsdp", *TRIVIAL, one_step)
    single_model = single.net_peak - trivial_single.net_peak
    fsdp_model = fsdp.net_peak - trivial_fsdp.net_peak
    single_plan = estimate(tmp_path, STATE_HEAVY)
    fsdp_plan = estimate(tmp_path, [*STATE_HEAVY, "strategy=fsdp"], world_size=2)
    # the build: what building this model added to what the process held before; a rank of the meta build
    # never holds the whole fp32 model (the one-process build does, which shows the measure sees it)
    full_weights = 4 * planned(tmp_path, STATE_HEAVY)[1].num_params(non_embedding=False)
    fsdp_build, single_build = fsdp.build, single.build  # a trivial model's build adds ~3 MB
    print(  # the figures of docs/SCALING.md
        f"\nsingle: {figures(single_model, single_plan)}\nfsdp rank: {figures(fsdp_model, fsdp_plan)}"
        f"\nfsdp / single: {fsdp_model / single_model:.2f} (with what any process holds: "
        f"{fsdp.peak / single.peak:.2f}); build over the fp32 model: fsdp {fsdp_build / full_weights:.2f}, "
        f"single {single_build / full_weights:.2f}"
    )
    assert fsdp_model <= 0.6 * single_model, (fsdp_model / MIB, single_model / MIB)
    assert within(single_plan.total, single_model)
    assert within(fsdp_plan.total, fsdp_model)
    assert fsdp_build < 0.75 * full_weights, (fsdp_build / MIB, full_weights / MIB)
    assert single_build > 0.9 * full_weights


def staged(cfg: Config, vocab_size: int) -> Config:
    """`cfg` on 2 pipeline stages with another vocabulary, for the plan only (not re-checked)."""
    cfg = copy.copy(cfg)
    cfg.strategy, cfg.model = replace(cfg.strategy, pp=2), replace(cfg.model, vocab_size=vocab_size)
    return cfg


def test_pipeline_stages_hold_their_layers_the_first_keeps_micro_batches_in_flight(tmp_path: Path) -> None:
    plan, model = planned(tmp_path, ["strategy=fsdp", "model.n_layer=8", "trainer.global_batch_size=16"])
    shapes, cfg = ModelShapes.of(model), plan.cfg  # 8 sequences a micro-batch: 2 micro-batches a step
    one_stage = estimate_memory(cfg, shapes, 1, 4, grad_accum_steps=2)
    first = estimate_memory(staged(cfg, vocab_size=2), shapes, 2, 4, grad_accum_steps=2)
    last = estimate_memory(staged(cfg, vocab_size=2**16), shapes, 2, 4, grad_accum_steps=2)
    tokens = 8 * 32
    per_layer = tokens * saved_bytes_per_token_per_layer(cfg.model, 4, autocast=False)
    final_norm = tokens * cfg.model.n_embd * 2 * 4  # its input and output, fp32
    assert one_stage.activations == 8 * per_layer + final_norm
    # under 1F1B the first stage keeps both micro-batches of its 4 layers in flight
    assert first.stage == "first pipeline stage" and first.loss == 0
    assert first.activations == 2 * 4 * per_layer
    # with a large vocabulary the last stage's loss makes it the worst: 4 layers of one micro-batch
    assert last.stage == "last pipeline stage" and last.loss > first.activations
    assert last.activations == 4 * per_layer + final_norm


def test_fsdp_accumulating_gradients_holds_them_unsharded(tmp_path: Path) -> None:
    one = estimate(tmp_path, ["strategy=fsdp"], world_size=2)
    accumulating = estimate(tmp_path, ["strategy=fsdp", "trainer.global_batch_size=32"], world_size=2)
    assert one.accumulated_gradients == 0
    # not synced until the last micro-batch, every rank's gradients are the whole model's, in fp32
    assert accumulating.accumulated_gradients == 2 * accumulating.gradients
    assert "unsharded while accumulating" in accumulating.describe()


def test_fsdp_sends_one_and_a_half_times_what_ddp_sends(tmp_path: Path) -> None:
    # the ZeRO paper's count in fp32: DDP's all-reduce is 2x the gradients, FSDP gathers the weights for
    # forward and again for backward and reduce-scatters the gradients: 3x, less the root gathered once
    ddp_plan, model = planned(tmp_path, ["strategy=ddp"], world_size=4)
    fsdp_plan, _ = planned(tmp_path, ["strategy=fsdp"], world_size=4)
    ddp = estimate_communication(ddp_plan.cfg, ModelShapes.of(model), 4, 4)
    fsdp = estimate_communication(fsdp_plan.cfg, ModelShapes.of(model), 4, 4)
    gradient_bytes = 4 * ModelShapes.of(model).trainable
    assert ddp.total == 2 * gradient_bytes * 3 / 4
    root_share = ModelShapes.of(model).root / ModelShapes.of(model).total
    assert fsdp.total == pytest.approx(1.5 * ddp.total * (1 - root_share / 3))
    assert "gradient all-reduce" in ddp.describe() and "weight all-gathers" in fsdp.describe()
