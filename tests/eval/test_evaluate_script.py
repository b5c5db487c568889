"""scripts/evaluate.py --tasks on a checkpoint: a table and JSON (one-line errors: test_bad_inputs.py)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from gptforge.config import EvalConfig
from gptforge.eval.evaluator import build_task_evaluator
from gptforge.eval.host import LocalHost
from gptforge.trainer.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def test_evaluate_prints_a_table_of_task_scores_and_writes_them_as_json(
    shakespeare_run: Path, next_line_task: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    qa = tmp_path / "qa.jsonl"
    rows = [
        {"prompt": "ROMEO:\nI", "references": [" will", " am"]},
        {"prompt": "JULIET:\nO", "references": " Romeo"},
    ]
    qa.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = ["--tasks", str(next_line_task), str(qa), "--limit", "40", "--max-new-tokens", "6"]
    evaluate = runpy.run_path(str(ROOT / "scripts" / "evaluate.py"))["main"]  # in this process: no start-up
    evaluate([str(shakespeare_run), *args, "--json", str(tmp_path / "scores.json")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("checkpoints/step_200:")
    assert lines[1].split() == ["task", "metric", "value", "n-shot", "examples"]
    assert [line.split()[:2] for line in lines[3:]] == [
        ["next_line", "acc"],
        ["next_line", "acc_norm"],
        *(["qa", metric] for metric in ("exact_match", "f1", "rouge_l", "bleu")),
    ]
    report = json.loads((tmp_path / "scores.json").read_text())
    assert report["tasks"]["qa"]["examples"] == 2 and report["tasks"]["next_line"]["num_fewshot"] == 0
    loaded = load_checkpoint(shakespeare_run)
    evaluator = build_task_evaluator(EvalConfig(tasks=[str(next_line_task)], limit=40), loaded.tokenizer, 32)
    expected = evaluator.evaluate(LocalHost(loaded.model, torch.device("cpu")))["next_line"]
    assert report["tasks"]["next_line"] == {**expected, "num_fewshot": 0}
