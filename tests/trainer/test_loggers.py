"""Loggers as a user runs them: console summary and lines, JSONL schema, TensorBoard files, wandb offline."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from gptforge.errors import ConfigError
from gptforge.trainer import train
from gptforge.trainer.checkpoint.layout import WANDB_ID_FILE
from gptforge.trainer.loggers import format_record, scalars

TRAIN_KEYS = {
    "step",
    "max_steps",
    "loss",
    "lr",
    "grad_norm",
    "tokens_seen",
    "tokens_per_sec",
    "tokens_per_sec_per_device",
    "step_time_s",
    "data_wait_s",
    "peak_memory_gib",
    "eta_s",
}
EVAL_KEYS = {"step", "val_loss", "val_ppl"}
BUILD_KEYS = {"memory_before_build_gib", "peak_memory_after_build_gib"}  # the process's first record only


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_console_jsonl_and_tensorboard_together(tiny_config, capsys) -> None:
    cfg = tiny_config(
        "logger=[console,jsonl,tensorboard]",
        "logger.console.progress_bar=false",
        "trainer.max_steps=6",
        "trainer.log_every=2",
        "trainer.eval_every=6",
    )
    run_dir = Path(cfg.out_dir)
    train(cfg, run_dir)

    out = capsys.readouterr().out
    for label in ("parameters", "FLOPs per token", "tokens per step", "world size", "strategy", "precision"):
        assert f"  {label} " in out
    assert "27.58K non-embedding" in out and "190.08K" in out  # see the hand count in test_metrics.py
    assert re.search(rf"run directory +{re.escape(str(run_dir.resolve()))}", out)
    assert "text_file: data/tinyshakespeare.txt" in out
    step_lines = [line for line in out.splitlines() if line.startswith("step ") and "tok/s" in line]
    # one line per log step, and the first step's: a plot starts at the initial loss
    assert [line.split()[1] for line in step_lines] == ["1/6", "2/6", "4/6", "6/6"]

    logged = records(run_dir)
    train_records = [r for r in logged if "loss" in r]
    assert train_records[0].keys() == TRAIN_KEYS | BUILD_KEYS  # no mfu on a CPU without a configured peak
    assert all(r.keys() == TRAIN_KEYS for r in train_records[1:])
    counts = {"step", "max_steps", "tokens_seen"}
    assert all(type(r[key]) is (int if key in counts else float) for r in train_records for key in r)
    assert [r.keys() for r in logged if "val_loss" in r] == [EVAL_KEYS]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    event_files = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert event_files
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "train/tokens_per_sec", "val/loss", "val/ppl"} <= set(
        events.Tags()["scalars"]
    )
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 4, 6]


def test_progress_bar_shows_loss_and_throughput(tiny_config, capsys) -> None:
    cfg = tiny_config("logger.console.progress_bar=true", "trainer.max_steps=6", "trainer.log_every=3")
    train(cfg, Path(cfg.out_dir))
    bar = capsys.readouterr().err
    assert "6/6" in bar and "loss" in bar and "tok/s" in bar


def test_task_records_read_as_one_line_and_keep_their_names_on_dashboards() -> None:
    record = {"step": 40, "eval/next_line/acc": 0.5, "eval/next_line/examples": 200.0, "eval/qa/f1": 0.25}
    assert format_record(record) == "step 40 | next_line: acc 0.5000, 200 examples | qa: f1 0.2500"
    assert scalars(record) == {k: v for k, v in record.items() if k != "step"}


@pytest.fixture
def offline_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """wandb with no network, no key and no files outside tmp_path."""
    home = tmp_path / "wandb_home"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB_DIR", str(home))
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(home / name.lower()))
    monkeypatch.setenv("HOME", str(home))  # no ~/.netrc with a key
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return home


def test_wandb_offline_writes_a_run_and_a_resume_continues_its_id(tiny_config, offline_wandb) -> None:
    common = [
        "logger=[console,jsonl,wandb]",
        "logger.wandb.mode=offline",
        "trainer.checkpoint_every=6",
        "scheduler.decay_steps=12",  # the run is extended from 6 to 12 steps: the same schedule for both
    ]
    first = tiny_config(*common, "trainer.max_steps=6")
    run_dir = Path(first.out_dir)
    train(first, run_dir)
    run_id = (run_dir / WANDB_ID_FILE).read_text().strip()
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert [r.name.rsplit("-", 1)[1] for r in runs] == [run_id]
    assert (runs[0] / f"run-{run_id}.wandb").stat().st_size > 0

    train(tiny_config(*common, "trainer.max_steps=12"), run_dir)  # resumes from step 6
    assert (run_dir / WANDB_ID_FILE).read_text().strip() == run_id
    resumed = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(resumed) == 2 and all(r.name.endswith(f"-{run_id}") for r in resumed)


def test_wandb_that_cannot_start_warns_and_the_run_goes_on(tiny_config, offline_wandb, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_MODE")
    cfg = tiny_config("logger=[console,jsonl,wandb]", "logger.wandb.mode=online", "trainer.max_steps=6")
    train(cfg, Path(cfg.out_dir))  # online without a key
    err = capsys.readouterr().err
    assert "warning: wandb logger off for this run" in err and "logger.wandb.mode=offline" in err
    assert [r["step"] for r in records(Path(cfg.out_dir)) if "loss" in r] == [1, 5, 6]


def test_a_logger_whose_package_is_missing_stops_the_run_at_start(tiny_config, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # what Python reports for a package not installed
    cfg = tiny_config("logger=[console,jsonl,tensorboard]", "trainer.max_steps=6")
    with pytest.raises(ConfigError, match="logger tensorboard is configured but the tensorboard package"):
        train(cfg, Path(cfg.out_dir))
    assert not (Path(cfg.out_dir) / "metrics.jsonl").exists()
