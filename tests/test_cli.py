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


def test_a_sweep_names_each_job_by_its_overrides_ends_with_a_table_and_plots(tmp_path: Path) -> None:
    result = run_script("train.py", "-m", *FAST, f"out_dir={tmp_path / 'sweep'}", "optim.lr=1e-3,3e-3")
    assert result.returncode == 0, result.stderr
    sweep = tmp_path / "sweep-sweep"
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["optim.lr=0.001", "optim.lr=0.003"]
    assert all((sweep / job / "checkpoints" / "step_4").is_dir() for job in jobs)
    table = (sweep / "sweep_summary.md").read_text()
    assert "| job | step | loss | val_loss | tokens/s |" in table and table in result.stdout
    rows = [line for line in table.splitlines() if line.startswith("| optim.lr=")]
    assert len(rows) == 2 and all("| 4 |" in row for row in rows)
    plotted = run_script("plot_metrics.py", str(sweep))
    assert plotted.returncode == 0, plotted.stderr
    assert (sweep / "metrics.png").stat().st_size > 20_000


def _launch(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(
        [str(ROOT / "launch.sh"), *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=600
    )


def test_launch_passes_overrides_trains_logs_what_the_console_showed_and_stays_finished(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    overrides = [*FAST, f"out_dir={run_dir}", "trainer.sample_tokens=20", "trainer.eval_every=0"]
    result = _launch(*overrides)
    assert result.returncode == 0, result.stderr
    assert "--- sample ---" in result.stdout
    assert (run_dir / "checkpoints" / "step_4").is_dir()
    # train.log holds the console: the summary, every step line, the final evaluation, the sample
    log = (run_dir / "train.log").read_text()
    for line in (
        "gptforge run 'smoke'",
        "step 1/4 | loss",
        "step 4/4 | loss",
        "step 4 | val_loss",
        "--- sample ---",
    ):
        assert line in log and line in result.stdout
    # eval_every=0: no periodic evaluation, one at the end
    evaluations = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evaluations if "val_loss" in r] == [4]

    metrics_before = (run_dir / "metrics.jsonl").read_text()
    again = _launch(*overrides)
    assert again.returncode == 0, again.stderr
    assert f"the run in {run_dir} is finished (step 4 of trainer.max_steps=4)" in again.stdout
    assert "trainer.max_steps=8" in again.stdout and "--- sample ---" not in again.stdout
    assert (run_dir / "metrics.jsonl").read_text() == metrics_before


def test_a_progress_bar_run_logs_lines_not_bar_frames(tmp_path: Path) -> None:
    result = run_script("train.py", *FAST, f"out_dir={tmp_path}", "logger.console.progress_bar=true")
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "train.log").read_text()
    assert "step/s" in result.stderr and "step/s" not in log  # the bar is on the console only
    assert "step 4/4 | loss" in log and "step 4/4 | loss" not in result.stdout + result.stderr


def test_launch_dry_run_prints_the_plan_checks_everything_and_writes_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = _launch(
        *FAST, f"out_dir={run_dir}", "trainer.global_batch_size=16", env={"DRY_RUN": "1", "NPROC": "2"}
    )
    assert result.returncode == 0, result.stderr
    assert "torch.distributed.run --nproc_per_node=2" in result.stdout
    for fact in (
        "tokens per step    512 (4 sequences x 2 accumulation x 2 ranks x 32 tokens)",
        "length             4 steps x 512 = 2.05K tokens, from step 0",
        "strategy           ddp",
        "memory (estimate)  ~",
        "corpus             1.00M training tokens: the run reads 0.00 epochs",
        "config is valid (dry run: nothing was trained or written)",
    ):
        assert fact in result.stdout, fact
    assert not run_dir.exists()
    # what would fail on the cluster fails here: a bad key, a missing file, the devices, the strategy
    for overrides, env, culprit in (
        (["model.n_layr=2"], {}, "model.n_layr"),
        (["data.path=nowhere.txt"], {}, "nowhere.txt does not exist"),
        (["trainer.device=cuda"], {"NPROC": "4"}, "NPROC=4 processes per node with trainer.device=cuda"),
        (["strategy=single"], {"NPROC": "2"}, "strategy=single runs one process, but this job has 2"),
        (["trainer.global_batch_size=12"], {"NPROC": "2"}, "trainer.global_batch_size=12 does not divide"),
    ):
        bad = _launch(*FAST, f"out_dir={run_dir}", *overrides, env={"DRY_RUN": "1", **env})
        assert bad.returncode == 2 and culprit in bad.stderr, (overrides, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1
    assert not run_dir.exists()
