"""The lm-evaluation-harness adapter: `python -m gptforge.eval.harness --model gptforge ...` gives what
lm-eval's own `hf` model gives on the exported checkpoint, and what gptforge's evaluator gives."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from gptforge.config import EvalConfig
from gptforge.eval.evaluator import build_task_evaluator
from gptforge.eval.host import LocalHost
from gptforge.trainer.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

lm_eval = pytest.importorskip("lm_eval")  # the eval extra: scripts/test.sh installs it with [dev]

LM_EVAL_TASKS = ROOT / "tests" / "eval" / "lm_eval_tasks"  # their data_files are relative to ROOT
MULTIPLE_CHOICE, ROLLING, GENERATE = (
    "gptforge_next_line",
    "gptforge_next_line_rolling",
    "gptforge_next_line_continue",
)
LIMIT = 50  # documents per task
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # as one_torch_thread, for the subprocess
LOGLIKELIHOOD_TOLERANCE = 1e-4  # nats per request, fp32 on CPU; measured up to 3e-5 (rolling, ~110 tokens)


def logged_samples(output: Path, task: str) -> dict[int, list]:
    """doc_id -> the responses lm-eval logged for each of the doc's requests (--log_samples)."""
    (path,) = output.glob(f"*/samples_{task}_[0-9]*.jsonl")  # then the date
    return {s["doc_id"]: s["resps"] for s in map(json.loads, path.read_text().splitlines())}


def loglikelihoods(responses: list) -> list[float]:
    """The log-likelihood of each request: (ll, is_greedy) pairs, or rolling totals on their own."""
    return [float(r[0][0]) if isinstance(r[0], list | tuple) else float(r[0]) for r in responses]


def test_adapter_scores_as_lm_eval_scores_the_exported_hf_model(
    shakespeare_run: Path, next_line_task: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lm_eval.tasks import TaskManager

    exported = tmp_path / "hf"
    runpy.run_path(str(ROOT / "scripts" / "export_hf.py"))["main"]([str(shakespeare_run), str(exported)])
    tasks = ",".join((MULTIPLE_CHOICE, ROLLING, GENERATE))
    command = [sys.executable, "-m", "gptforge.eval.harness", "--model", "gptforge", "--device", "cpu"]
    ours = subprocess.run(
        [
            *command,
            *("--model_args", f"checkpoint={shakespeare_run}", "--tasks", tasks, "--limit", str(LIMIT)),
            *("--include_path", str(LM_EVAL_TASKS), "--output_path", str(tmp_path / "ours"), "--log_samples"),
        ],
        cwd=ROOT,
        env={**os.environ, **OFFLINE, **ONE_THREAD},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ours.returncode == 0, ours.stderr[-3000:]
    assert MULTIPLE_CHOICE in ours.stdout and "acc_norm" in ours.stdout  # lm-eval's own table

    monkeypatch.chdir(ROOT)
    theirs = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(exported), "dtype": "float32"},
        tasks=tasks.split(","),
        task_manager=TaskManager(include_path=str(LM_EVAL_TASKS), include_defaults=False),
        device="cpu",
        batch_size=8,
        limit=LIMIT,
        log_samples=True,
    )
    (results_file,) = (tmp_path / "ours").glob("*/results_*.json")
    our_results = json.loads(results_file.read_text())["results"]
    for task, metric in ((MULTIPLE_CHOICE, "acc"), (MULTIPLE_CHOICE, "acc_norm"), (GENERATE, "exact_match")):
        assert our_results[task][f"{metric},none"] == theirs["results"][task][f"{metric},none"]
    for task in (MULTIPLE_CHOICE, ROLLING):
        their_samples = {s["doc_id"]: s["resps"] for s in theirs["samples"][task]}
        for doc_id, responses in logged_samples(tmp_path / "ours", task).items():
            expected = loglikelihoods(their_samples[doc_id])
            assert loglikelihoods(responses) == pytest.approx(expected, abs=LOGLIKELIHOOD_TOLERANCE)
    their_answers = {s["doc_id"]: s["resps"] for s in theirs["samples"][GENERATE]}
    assert logged_samples(tmp_path / "ours", GENERATE) == their_answers  # the same greedy continuations

    loaded = load_checkpoint(shakespeare_run)  # and gptforge's own evaluator, by lm-eval's definitions
    evaluator = build_task_evaluator(
        EvalConfig(tasks=[str(next_line_task)], limit=LIMIT), loaded.tokenizer, 32
    )
    scores = evaluator.evaluate(LocalHost(loaded.model, torch.device("cpu")))["next_line"]
    assert scores["acc"] == pytest.approx(our_results[MULTIPLE_CHOICE]["acc,none"])
    assert scores["acc_norm"] == pytest.approx(our_results[MULTIPLE_CHOICE]["acc_norm,none"])
