"""Whole runs on CPU: the loss falls, everything lands in the run directory, resume continues exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gptforge.errors import ConfigError
from gptforge.trainer import train


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(run_dir) if "loss" in r}


def test_smoke_run_learns_and_writes_the_run_directory(tiny_config) -> None:
    cfg = tiny_config("trainer.max_steps=60", "trainer.log_every=10", "trainer.eval_every=30")
    run_dir = Path(cfg.out_dir)
    metrics = train(cfg, run_dir)

    losses = train_losses(run_dir)
    assert losses[60] < losses[10] - 0.5  # from ~uniform over 66 chars (4.2) towards character statistics
    train_record = next(r for r in records(run_dir) if "loss" in r)
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_sec", "tokens_seen"} <= train_record.keys()
    assert train_record["tokens_per_sec"] > 0
    evals = [r for r in records(run_dir) if "val_loss" in r]
    assert [r["step"] for r in evals] == [30, 60]
    assert evals[-1]["val_ppl"] == pytest.approx(2.718281828 ** evals[-1]["val_loss"], rel=1e-6)
    assert metrics["val_loss"] == evals[-1]["val_loss"]
    assert (run_dir / "config.yaml").is_file()
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == [
        "step_20",
        "step_40",
        "step_60",
    ]


@pytest.mark.parametrize("accumulate", [False, True])
def test_resume_continues_on_the_uninterrupted_loss_curve(
    tiny_config, tmp_path: Path, accumulate: bool
) -> None:
    common = [
        "trainer.log_every=1",
        "trainer.eval_every=0",
        "trainer.checkpoint_every=10",
        "scheduler.decay_steps=20",
        "model.dropout=0.1",
    ]
    if accumulate:
        common.append("trainer.global_batch_size=8")
    straight = tiny_config(*common, "trainer.max_steps=20", f"out_dir={tmp_path / 'straight'}")
    train(straight, Path(straight.out_dir))

    interrupted = tiny_config(*common, "trainer.max_steps=10", f"out_dir={tmp_path / 'resumed'}")
    train(interrupted, Path(interrupted.out_dir))
    resumed = tiny_config(*common, "trainer.max_steps=20", f"out_dir={tmp_path / 'resumed'}")
    train(resumed, Path(resumed.out_dir))

    expected, got = train_losses(Path(straight.out_dir)), train_losses(Path(resumed.out_dir))
    assert sorted(got) == list(range(1, 21))  # the log holds each step once, even across the restart
    assert [got[s] for s in range(11, 21)] == [expected[s] for s in range(11, 21)]  # bit-exact on CPU


def test_rerunning_a_finished_run_trains_nothing_more(tiny_config) -> None:
    cfg = tiny_config("trainer.max_steps=10", "trainer.eval_every=0")
    train(cfg, Path(cfg.out_dir))
    before = records(Path(cfg.out_dir))
    train(cfg, Path(cfg.out_dir))
    assert [r for r in records(Path(cfg.out_dir)) if "loss" in r] == [r for r in before if "loss" in r]


def test_resume_never_refuses_to_overwrite_unless_asked(tiny_config) -> None:
    cfg = tiny_config("trainer.max_steps=10", "trainer.eval_every=0")
    run_dir = Path(cfg.out_dir)
    train(cfg, run_dir)
    with pytest.raises(ConfigError, match=r"trainer\.overwrite=true"):
        train(tiny_config("trainer.max_steps=10", "trainer.resume=never"), run_dir)
    assert (run_dir / "checkpoints" / "step_10").is_dir()  # nothing lost

    train(tiny_config("trainer.max_steps=10", "trainer.resume=never", "trainer.overwrite=true"), run_dir)
    set_aside = list(run_dir.glob("checkpoints.replaced-*"))
    assert len(set_aside) == 1 and (set_aside[0] / "step_10").is_dir()  # moved aside, never deleted


@pytest.mark.parametrize("model", ["tiny", "llama_tiny"])
def test_both_flavours_train(tiny_config, model: str) -> None:
    cfg = tiny_config(
        f"model={model}",
        "model.n_layer=2",
        "model.n_embd=32",
        "model.n_head=2",
        "model.n_kv_head=1" if model == "llama_tiny" else "model.n_kv_head=null",
        "trainer.max_steps=30",
        "trainer.eval_every=0",
        "trainer.log_every=10",
    )
    train(cfg, Path(cfg.out_dir))
    losses = train_losses(Path(cfg.out_dir))
    assert losses[30] < losses[10]
