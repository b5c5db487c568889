"""Whole runs on streamed, mixed and pre-tokenized data: they train, evaluate, resume on the same batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_script
from data_helpers import write_jsonl, write_txt_dir

from gptforge.trainer import train


def losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def val_losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["val_loss"] for r in map(json.loads, lines) if "val_loss" in r]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_txt_dir(tmp_path / "corpus", 6, docs_per_file=30)


STREAMED = ["tokenizer=byte", "data.val_fraction=0.1", "data.shuffle_blocks=16", "data.tokenize_batch=8"]
COMMON = [
    "trainer.log_every=1",
    "trainer.eval_every=5",
    "trainer.checkpoint_every=5",
    "scheduler.decay_steps=12",
    "scheduler.warmup_steps=2",
]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_streamed_run_resumes_on_the_uninterrupted_loss_curve(
    tiny_config, corpus: Path, tmp_path: Path, num_workers: int
) -> None:
    data = ["data=local", f"data.path={corpus}", f"data.num_workers={num_workers}", *STREAMED, *COMMON]
    straight = tiny_config(*data, "trainer.max_steps=12", f"out_dir={tmp_path / 'straight'}")
    train(straight, Path(straight.out_dir))
    for max_steps in (5, 12):  # stop at step 5 (a checkpoint), then resume to the end
        resumed = tiny_config(*data, f"trainer.max_steps={max_steps}", f"out_dir={tmp_path / 'resumed'}")
        train(resumed, Path(resumed.out_dir))
    expected, got = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert [got[s] for s in range(6, 13)] == [expected[s] for s in range(6, 13)]
    assert val_losses(tmp_path / "straight")[-1] < 5.0  # held-out documents were evaluated


def test_mixture_and_jsonl_validation_file_train(tiny_config, corpus: Path, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "web.jsonl", range(100))
    write_jsonl(tmp_path / "val.jsonl", range(100, 130))
    sources = f"data.sources=[{{path:{tmp_path / 'web.jsonl'},weight:0.7}},{{path:{corpus},weight:0.3}}]"
    cfg = tiny_config(
        "data=mixture",
        sources,
        f"data.val_path={tmp_path / 'val.jsonl'}",
        "data.text_unit=paragraph",
        *STREAMED,
        "trainer.max_steps=6",
        "trainer.eval_every=3",
        "scheduler.warmup_steps=2",
    )
    train(cfg, Path(cfg.out_dir))
    assert len(val_losses(Path(cfg.out_dir))) == 2


def test_prepared_shards_train_with_memmap(tiny_config, corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    result = run_script(
        "prepare_data.py", "--input", str(corpus), "--out", str(out), "--quiet", "--workers", "1"
    )
    assert result.returncode == 0, result.stderr
    cfg = tiny_config(
        "data=memmap",
        f"data.path={out}",
        "tokenizer=byte",
        "trainer.max_steps=4",
        "trainer.eval_every=2",
        "scheduler.warmup_steps=2",
    )
    train(cfg, Path(cfg.out_dir))
    assert len(val_losses(Path(cfg.out_dir))) == 2
    mismatch = tiny_config(
        "data=memmap", f"data.path={out}", "tokenizer=char", f"out_dir={tmp_path / 'other'}"
    )
    with pytest.raises(Exception, match=r"prepared with tokenizer=byte, but tokenizer=char is configured"):
        train(mismatch, Path(mismatch.out_dir))
