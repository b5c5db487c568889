"""The command line as users type it: overrides, Hydra's flags, one-line errors, launch.sh."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY, run_script

FAST = [
    *TINY,
    "trainer.max_steps=4",
    "scheduler.warmup_steps=1",
    "trainer.eval_every=2",
    "trainer.checkpoint_every=2",
]


@pytest.mark.parametrize(
    ("override", "culprit"),
    [
        ("model.n_layr=4", "model.n_layr"),
        ("optim.lr=fast", "optim.lr"),
        ("strategy=foo", "strategy/foo"),
        ("model.n_head=3", "model.n_embd=32 is not divisible by model.n_head=3"),
        ("data.path=missing.txt", "missing.txt does not exist"),
    ],
)
def test_bad_input_is_one_line_naming_the_culprit(tmp_path: Path, override: str, culprit: str) -> None:
    result = run_script("train.py", *FAST, f"out_dir={tmp_path}", override)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert culprit in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = run_script("train.py", *FAST, f"out_dir={tmp_path}", "data.path=missing.txt", "debug=true")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_help_and_cfg_job() -> None:
    help_result = run_script("train.py", "--help")
    assert help_result.returncode == 0 and "model: gpt2_124m, gpt2_350m" in help_result.stdout
    cfg_result = run_script("train.py", "--cfg", "job", "model.n_layer=6")
    assert cfg_result.returncode == 0 and "n_layer: 6" in cfg_result.stdout


def test_train_script_writes_config_metrics_and_checkpoints(tmp_path: Path) -> None:
    result = run_script("train.py", *FAST, f"out_dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "run"
    assert (run_dir / "config.yaml").is_file()
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in r for r in lines) and any("loss" in r for r in lines)
    assert (run_dir / "checkpoints" / "step_4" / "manifest.json").is_file()


def test_multirun_sweep_gives_each_job_its_own_run_directory(tmp_path: Path) -> None:
    result = run_script("train.py", "-m", *FAST, f"out_dir={tmp_path / 'sweep'}", "optim.lr=1e-3,3e-3")
    assert result.returncode == 0, result.stderr
    jobs = sorted((tmp_path / "sweep-sweep").iterdir())
    assert [p.name for p in jobs if p.is_dir()] == ["0", "1"]
    assert all((job / "checkpoints" / "step_4").is_dir() for job in jobs if job.is_dir())


def _launch(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(
        [str(ROOT / "launch.sh"), *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=600
    )


def test_launch_passes_overrides_and_trains(tmp_path: Path) -> None:
    result = _launch(*FAST, f"out_dir={tmp_path / 'run'}", "trainer.sample_tokens=20")
    assert result.returncode == 0, result.stderr
    assert "--- sample ---" in result.stdout
    assert (tmp_path / "run" / "checkpoints" / "step_4").is_dir()


def test_launch_dry_run_validates_without_training(tmp_path: Path) -> None:
    result = _launch(*FAST, f"out_dir={tmp_path / 'run'}", env={"DRY_RUN": "1", "NPROC": "2"})
    assert result.returncode == 0, result.stderr
    assert "torch.distributed.run --nproc_per_node=2" in result.stdout
    assert "config is valid" in result.stdout
    assert not (tmp_path / "run" / "checkpoints").exists()
    bad = _launch("model.n_layr=2", env={"DRY_RUN": "1"})
    assert bad.returncode == 2 and "model.n_layr" in bad.stderr
