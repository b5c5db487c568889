"""AdamW parameter groups: weight decay on linear weights only; Muon for the hidden matrices."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gptforge.compose import compose
from gptforge.config import ModelConfig, OptimConfig
from gptforge.errors import ConfigError
from gptforge.models import GPT
from gptforge.trainer import train
from gptforge.trainer.optim import build_optimizer, param_groups, set_lr


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
@pytest.mark.parametrize("tie", [True, False])
def test_decay_only_on_linear_weights(flavour: str, tie: bool) -> None:
    model = GPT(
        ModelConfig(
            flavour=flavour, n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=32, tie_embeddings=tie
        )
    )
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decayed and all(model.get_parameter(n).dim() == 2 for n in decayed)
    embeddings = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Embedding)}
    assert not any(n.rsplit(".", 1)[0] in embeddings for n in decayed)
    assert all(model.get_parameter(n).dim() == 1 or n.rsplit(".", 1)[0] in embeddings for n in not_decayed)
    assert len(decayed) + len(not_decayed) == len(list(model.parameters()))


def test_optimizer_uses_configured_hyperparameters() -> None:
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=32))
    optimizer = build_optimizer(
        model, OptimConfig(lr=3e-4, betas=[0.8, 0.9], weight_decay=0.05), torch.device("cpu")
    )
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["lr"] == 3e-4 and optimizer.defaults["betas"] == (0.8, 0.9)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest() -> None:
    model = GPT(
        ModelConfig(
            n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=32, qk_norm=True, tie_embeddings=False
        )
    )
    optimizer = build_optimizer(model, OptimConfig(name="muon", lr=1e-3, muon_lr=0.02), torch.device("cpu"))
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in optimizer.muon.param_groups for p in g["params"]}
    in_adamw = {names[id(p)] for g in optimizer.adamw.param_groups for p in g["params"]}
    assert isinstance(optimizer.muon, torch.optim.Muon) and isinstance(optimizer.adamw, torch.optim.AdamW)
    assert in_muon == {n for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2}
    assert {"wte.weight", "wpe.weight", "lm_head.weight", "blocks.0.attn.q_norm.weight"} <= in_adamw
    assert not in_muon & in_adamw and len(in_muon | in_adamw) == len(list(model.parameters()))
    set_lr(optimizer, 5e-4)  # the schedule's lr; Muon's group keeps its ratio muon_lr / lr
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-2, 5e-4, 5e-4])


def test_muon_on_a_sharding_strategy_is_refused_in_one_line() -> None:
    for strategy in ("fsdp", "deepspeed_zero1"):
        with pytest.raises(ConfigError, match=rf"optim\.name=muon is not supported with {strategy[:4]}"):
            compose(["experiment=smoke", "optim=muon", f"strategy={strategy}"])
    assert compose(["experiment=smoke", "optim=muon", "strategy=ddp"]).optim.name == "muon"
    with pytest.raises(ConfigError, match=r"optim\.name='sgd' is not valid; choose one of: adamw, muon"):
        OptimConfig(name="sgd")


def test_muon_run_stopped_and_resumed_equals_the_straight_run(tiny_config) -> None:
    switches = ["optim=muon", "trainer.eval_every=0", "trainer.log_every=1", "scheduler.warmup_steps=1"]
    fixed = [*switches, "scheduler.decay_steps=6", "trainer.checkpoint_every=3"]
    straight = tiny_config(*fixed, "trainer.max_steps=6", "trainer.threads=1")
    straight = replace(straight, out_dir=str(Path(straight.out_dir).parent / "straight"))
    train(straight, Path(straight.out_dir))
    resumed = tiny_config(*fixed, "trainer.max_steps=3", "trainer.threads=1")
    train(resumed, Path(resumed.out_dir))
    train(tiny_config(*fixed, "trainer.max_steps=6", "trainer.threads=1"), Path(resumed.out_dir))
    assert losses(Path(resumed.out_dir)) == losses(Path(straight.out_dir))
    final = {
        name: torch.load(Path(c.out_dir) / "checkpoints/step_6/optimizer.pt")
        for name, c in (("straight", straight), ("resumed", resumed))
    }
    momenta = [s["momentum_buffer"] for s in final["resumed"]["muon"]["state"].values()]
    assert momenta and all(m.abs().sum() > 0 for m in momenta)
    for key, state in final["straight"]["muon"]["state"].items():
        assert torch.equal(
            state["momentum_buffer"], final["resumed"]["muon"]["state"][key]["momentum_buffer"]
        )


def losses(run_dir: Path) -> dict[int, float]:
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["loss"] for r in records if "loss" in r}
