"""experiment=sft: fine-tunes a checkpoint with its tokenizer, resumes exactly, trains LoRA adapters alone."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, compose_config
from safetensors.torch import load_file

from gptforge.config import Config
from gptforge.data.tokenizers import tokenizer_fingerprint
from gptforge.errors import ConfigError
from gptforge.trainer import checkpoint as ckpt
from gptforge.trainer import train
from gptforge.trainer.build import build_trainer
from gptforge.trainer.checkpoint import LORA_FILE, consolidate_checkpoint, load_checkpoint, save_consolidated

# the tiny model of TINY, fine-tuned on the bundled examples
SFT = [
    "experiment=sft",
    *(override for override in TINY if not override.startswith("experiment=")),
    f"data.path={ROOT / 'data' / 'sft_example.jsonl'}",
    "optim.lr=3e-3",
    "scheduler.warmup_steps=2",
    "scheduler.decay_steps=12",  # the same schedule for runs stopped early
    "trainer.log_every=1",
    "trainer.eval_every=6",
    "trainer.checkpoint_every=6",
]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory of the tiny smoke model, pretrained for a few steps on tiny Shakespeare."""
    run_dir = tmp_path_factory.mktemp("pretrain") / "run"
    cfg = compose_config(
        [
            *TINY,
            f"out_dir={run_dir}",
            f"data.path={ROOT / 'data' / 'tinyshakespeare.txt'}",
            "trainer.max_steps=10",
        ]
    )
    train(cfg, run_dir)
    return run_dir


def sft_config(out_dir: Path, *overrides: str) -> Config:
    return compose_config([*SFT, f"out_dir={out_dir}", *overrides])


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sft_without_init_from_fails_at_start_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^data=sft .* set trainer\.init_from=<checkpoint> \(") as err:
        train(sft_config(tmp_path / "run"))
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()


def test_sft_starts_from_the_checkpoints_weights_and_tokenizer(pretrained: Path, tmp_path: Path) -> None:
    trainer = build_trainer(sft_config(tmp_path / "run", f"trainer.init_from={pretrained}"), tmp_path / "run")
    try:
        loaded = load_checkpoint(pretrained)
        assert tokenizer_fingerprint(trainer.tokenizer) == tokenizer_fingerprint(loaded.tokenizer)
        state = trainer.strategy.unwrapped_model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in loaded.model.state_dict().items())
    finally:
        trainer.close()
    # the architecture and tokenizer come from the checkpoint, whatever model.* and tokenizer say
    other = sft_config(
        tmp_path / "byte", f"trainer.init_from={pretrained}", "tokenizer=byte", "model.n_layer=6"
    )
    trainer = build_trainer(other, tmp_path / "byte")
    trainer.close()
    assert (trainer.tokenizer.name, trainer.cfg.tokenizer.name, trainer.cfg.model.n_layer) == (
        "char",
        "char",
        2,
    )
    assert (
        f"{pretrained}" in trainer.summary().init_from
        and "model.* and tokenizer" in trainer.summary().init_from
    )


def test_sft_from_a_consolidated_file_finds_the_tokenizer_it_was_trained_with(
    pretrained: Path, tmp_path: Path
) -> None:
    state, metadata = consolidate_checkpoint(pretrained)  # metadata["source"]: the step directory
    file = tmp_path / "exported" / "model.safetensors"
    save_consolidated(state, file, metadata)
    trainer = build_trainer(sft_config(tmp_path / "run", f"trainer.init_from={file}"), tmp_path / "run")
    trainer.close()
    assert tokenizer_fingerprint(trainer.tokenizer) == tokenizer_fingerprint(
        load_checkpoint(pretrained).tokenizer
    )

    save_consolidated(state, file, metadata | {"source": str(tmp_path / "deleted")})
    with pytest.raises(ConfigError, match=r"no tokenizer_meta.json beside it and tokenizer=char, learned"):
        train(sft_config(tmp_path / "run2", f"trainer.init_from={file}"))


def test_sft_resumed_run_sees_the_uninterrupted_batches(pretrained: Path, tmp_path: Path) -> None:
    init = f"trainer.init_from={pretrained}"
    straight = tmp_path / "straight"
    train(sft_config(straight, init, "trainer.max_steps=12"), straight)
    resumed = tmp_path / "resumed"
    for max_steps in (6, 12):  # stop at the step-6 checkpoint, then resume to the end
        train(sft_config(resumed, init, f"trainer.max_steps={max_steps}"), resumed)

    def losses(run_dir: Path) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in records(run_dir) if "loss" in r}

    expected, got = losses(straight), losses(resumed)
    assert sorted(got) == list(range(1, 13)) and got == expected  # bit-exact on CPU
    assert all(math.isfinite(loss) for loss in got.values()) and expected[12] < expected[1]
    assert [r["step"] for r in records(straight) if "val_loss" in r] == [6, 12]
    final = [
        ckpt.load_rank_state(run_dir / "checkpoints" / "step_12", 0)["data"]
        for run_dir in (straight, resumed)
    ]
    assert final[0] == final[1]  # the same position in the examples: the same blocks were drawn


def test_sft_with_lora_trains_only_the_adapters_and_saves_them_apart(
    pretrained: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "lora"
    cfg = sft_config(run_dir, f"trainer.init_from={pretrained}", "model.lora.rank=4", "trainer.max_steps=6")
    train(cfg, run_dir)
    base = load_checkpoint(pretrained).model.state_dict()
    tuned = load_checkpoint(run_dir).model.state_dict()
    adapters = {k for k in tuned if k.endswith(("lora_a", "lora_b"))}
    assert adapters and set(tuned) - adapters == set(base)
    assert all(torch.equal(tuned[k], base[k]) for k in base)  # the pretrained weights never moved
    assert all(tuned[k].abs().sum() > 0 for k in adapters if k.endswith("lora_b"))  # the adapters did
    saved = load_file(str(run_dir / "checkpoints" / "step_6" / LORA_FILE))
    assert set(saved) == adapters
