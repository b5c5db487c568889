"""Consolidation to one safetensors file and `trainer.init_from`, in one process (strategy=single)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gptforge.errors import CheckpointError
from gptforge.models import GPT
from gptforge.trainer import train
from gptforge.trainer.checkpoint import (
    consolidate_checkpoint,
    load_checkpoint,
    load_initial_weights,
    save_consolidated,
)


def test_a_tied_model_consolidates_once_and_starts_a_new_run(tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config("model.tie_embeddings=true", "trainer.max_steps=8", "trainer.eval_every=0")
    train(cfg, Path(cfg.out_dir))
    saved = torch.load(Path(cfg.out_dir) / "checkpoints/step_8/model.pt", weights_only=True)

    state, metadata = consolidate_checkpoint(Path(cfg.out_dir))  # a run dir resolves to its newest checkpoint
    assert metadata["strategy"] == "single" and metadata["source"].endswith("step_8")
    assert "lm_head.weight" not in state  # the tied head is stored once, as wte.weight
    out = tmp_path / "model.safetensors"
    save_consolidated(state, out, metadata)

    model_cfg = compose_model_config(cfg, vocab_size=saved["wte.weight"].shape[0])
    model = GPT(model_cfg)
    load_initial_weights(model, out)
    assert model.lm_head.weight is model.wte.weight  # still tied
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[key]), key
    assert set(load_file(str(out))) == set(state)


def test_init_from_a_consolidated_file_adopts_its_architecture(tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config("trainer.max_steps=6", "trainer.eval_every=0")
    train(cfg, Path(cfg.out_dir))
    state, metadata = consolidate_checkpoint(Path(cfg.out_dir) / "checkpoints")
    out = tmp_path / "model.safetensors"
    save_consolidated(state, out, metadata)

    # the file's metadata names its model: a run asking for another width trains that model instead
    wider = tiny_config("model.n_embd=64", f"trainer.init_from={out}", f"out_dir={tmp_path / 'wider'}")
    train(wider, Path(wider.out_dir))
    assert load_checkpoint(Path(wider.out_dir)).cfg.model.n_embd == 32

    # without that metadata the run's own model.* must fit, and a misfit is one line
    bare = tmp_path / "bare.safetensors"
    save_consolidated(state, bare, {"format": "pt", "source": metadata["source"]})
    misfit = tiny_config("model.n_embd=64", f"trainer.init_from={bare}", f"out_dir={tmp_path / 'misfit'}")
    with pytest.raises(CheckpointError, match=r"does not fit the model: size mismatch") as err:
        train(misfit, Path(misfit.out_dir))
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match=r"trainer\.init_from=.*nothing.safetensors does not exist"):
        load_initial_weights(GPT(compose_model_config(cfg, 66)), tmp_path / "nothing.safetensors")


def compose_model_config(cfg, vocab_size: int):
    import dataclasses

    return dataclasses.replace(cfg.model, vocab_size=vocab_size)
