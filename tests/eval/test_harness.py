"""The lm-evaluation-harness adapter: `python -m gptforge.eval.harness --model gptforge ...` gives what
lm-eval's own `hf` model gives on the exported checkpoint, and what gptforge's evaluator gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_script, write_next_line_task

from gptforge.config import EvalConfig
from gptforge.eval.evaluator import build_task_evaluator
from gptforge.eval.host import LocalHost
from gptforge.trainer.pretrained import load_checkpoint

lm_eval = pytest.importorskip("lm_eval")  # the eval extra: installed by scripts/test.sh with [dev]

LM_EVAL_TASKS = ROOT / "tests" / "eval" / "lm_eval_tasks"
TASKS = ("gptforge_next_line", "gptforge_passages", "gptforge_continue")
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
LOGLIKELIHOOD_TOLERANCE = 1e-4  # nats per request; fp32 on CPU, measured ~2e-5 (summed over ~30 tokens)


def write_passages(directory: Path, count: int = 12, length: int = 100) -> None:
    """Held-out Shakespeare passages longer than the test model's 32-token window."""
    text = (ROOT / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    start = int(len(text) * 0.95)
    rows = [{"text": text[start + i * length : start + (i + 1) * length]} for i in range(count)]
    (directory / "passages.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def samples(output: Path, task: str) -> dict[int, list]:
    """doc_id -> the responses lm-eval logged for each request of the doc (--log_samples)."""
    (path,) = output.glob(f"*/samples_{task}_*.jsonl")
    return {s["doc_id"]: s["resps"] for s in map(json.loads, path.read_text().splitlines())}


def test_adapter_scores_as_lm_eval_scores_the_exported_hf_model(
    shakespeare_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lm_eval.tasks import TaskManager

    gptforge_task = write_next_line_task(tmp_path)  # next_line.jsonl (both) and next_line.yaml (gptforge's)
    write_passages(tmp_path)
    exported = tmp_path / "hf"
    assert run_script("export_hf.py", str(shakespeare_run), str(exported), env=OFFLINE).returncode == 0
    harness = [sys.executable, "-m", "gptforge.eval.harness", "--model", "gptforge", "--device", "cpu"]
    ours = subprocess.run(
        [
            *harness,
            *("--model_args", f"checkpoint={shakespeare_run}", "--tasks", ",".join(TASKS)),
            *("--include_path", str(LM_EVAL_TASKS), "--output_path", "ours", "--log_samples"),
        ],
        cwd=tmp_path,  # the task YAMLs' data_files are relative to it
        env={**os.environ, **OFFLINE},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ours.returncode == 0, ours.stderr[-3000:]
    assert "gptforge_next_line" in ours.stdout and "acc_norm" in ours.stdout  # lm-eval's own table

    monkeypatch.chdir(tmp_path)
    theirs = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(exported), "dtype": "float32"},
        tasks=list(TASKS),
        task_manager=TaskManager(include_path=str(LM_EVAL_TASKS), include_defaults=False),
        device="cpu",
        batch_size=8,
        log_samples=True,
    )
    (results_file,) = (tmp_path / "ours").glob("*/results_*.json")
    our_results = json.loads(results_file.read_text())["results"]
    for task, metrics in (
        ("gptforge_next_line", ("acc", "acc_norm")),
        ("gptforge_continue", ("exact_match",)),
    ):
        for metric in metrics:
            assert our_results[task][f"{metric},none"] == theirs["results"][task][f"{metric},none"]
    for task in ("gptforge_next_line", "gptforge_passages"):
        their_samples = {s["doc_id"]: s["resps"] for s in theirs["samples"][task]}
        for doc_id, responses in samples(tmp_path / "ours", task).items():
            for ours_response, their_response in zip(responses, their_samples[doc_id], strict=True):
                ours_ll = float(ours_response[0][0] if task != "gptforge_passages" else ours_response[0])
                their_ll = float(their_response[0][0] if task != "gptforge_passages" else their_response[0])
                assert ours_ll == pytest.approx(their_ll, abs=LOGLIKELIHOOD_TOLERANCE)
    their_answers = {s["doc_id"]: s["resps"][0][0] for s in theirs["samples"]["gptforge_continue"]}
    assert {d: r[0][0] for d, r in samples(tmp_path / "ours", "gptforge_continue").items()} == their_answers

    loaded = load_checkpoint(shakespeare_run)  # and gptforge's own evaluator: lm-eval's definitions
    evaluator = build_task_evaluator(EvalConfig(tasks=[str(gptforge_task)]), loaded.tokenizer, 32)
    scores = evaluator.evaluate(LocalHost(loaded.model, torch.device("cpu")))["next_line"]
    assert scores["acc"] == pytest.approx(our_results["gptforge_next_line"]["acc,none"])
    assert scores["acc_norm"] == pytest.approx(our_results["gptforge_next_line"]["acc_norm,none"])
